"""Dockerfiles -> orch build plans (pure: text, build args and a platform in, stages out).

``parse(text, path)`` reads the syntax (parser directives, comments, line continuations,
exec and shell forms, ``--flags``) into instructions; ``plan(dockerfile, platform, args,
target)`` walks them the way a Docker builder does (ARG/ENV scoping and ``$VAR`` /
``${VAR:-word}`` substitution, WORKDIR, USER, SHELL, multi-stage FROM ... AS) and returns
the stages the target needs, each a base, steps (Run, Copy, Mkdir) and an image config.

``FROM debian:SUITE[-slim]`` becomes orch's own Debian base for the target architecture,
and the packages of ``RUN apt-get install`` join that base (orch builds without network,
pinned in orch.lock). Anything orch cannot honour is refused with the Dockerfile's path and
line number, never skipped.
"""
from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

from orchestrator.errors import ManifestError
from orchestrator.image.aptget import apt_packages

PROXY_ARGS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy",
              "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy")
DEBIAN_NUMBERS = {"10": "buster", "11": "bullseye", "12": "bookworm", "13": "trixie"}
DEFAULT_SHELL = ("/bin/sh", "-c")
_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_NAME = re.compile(r"[A-Za-z0-9_]")
_STAGE = re.compile(r"^[a-z][a-z0-9._-]*$")
_SUITE = re.compile(r"^[a-z][a-z0-9-]*$")
_HEREDOC = re.compile(r"(^|\s)<<-?['\"]?[A-Za-z_]")
_SIGNAL = re.compile(r"^(SIG[A-Z0-9+-]+|\d+)$")
_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_GO_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_FLAGS = {"FROM": {"platform"}, "COPY": {"from", "chown", "chmod", "link"},
          "ADD": {"chown", "chmod", "link"}, "RUN": {"network"},
          "HEALTHCHECK": {"interval", "timeout", "start-period", "retries"}}
_REFUSED = {
    "ONBUILD": "ONBUILD triggers are not supported",
    "VOLUME": "VOLUME is not supported: declare volumes in the manifest (deploy: volumes: [NAME:/path])",
    "MAINTAINER": None,   # deprecated; becomes LABEL maintainer=...
}
_KNOWN = ("FROM", "RUN", "COPY", "ADD", "ENV", "ARG", "WORKDIR", "USER", "EXPOSE", "LABEL", "CMD",
          "ENTRYPOINT", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "ONBUILD", "VOLUME", "MAINTAINER")


# ---------------------------------------------------------------- syntax

@dataclass(frozen=True)
class Instruction:
    line: int                               # first line of the instruction (1-based)
    keyword: str                            # upper case: FROM, RUN, ...
    flags: Tuple[Tuple[str, str], ...]      # leading --name=value (value "" for a bare --name)
    args: str                               # the rest, continuation lines joined
    exec_form: Optional[Tuple[str, ...]]    # the JSON array form, when args is one


@dataclass(frozen=True)
class Dockerfile:
    path: str                               # as shown in errors (relative to the working directory)
    instructions: Tuple[Instruction, ...]
    escape: str = "\\"


def _error(path: str, line: Optional[int], message: str, hint: Optional[str] = None) -> ManifestError:
    return ManifestError(message, file=path, line=line, hint=hint)


def parse(text: str, path: str = "Dockerfile") -> Dockerfile:
    """The instructions of a Dockerfile. Raises ManifestError (path:line) on bad syntax."""
    lines = text.splitlines()
    escape = "\\"
    seen_directives: Dict[str, str] = {}
    start = 0
    for i, raw in enumerate(lines):
        m = _DIRECTIVE.match(raw.strip())
        if not m:
            break
        name, value = m.group(1).lower(), m.group(2)
        if name in seen_directives:
            raise _error(path, i + 1, f"parser directive {name} given twice")
        seen_directives[name] = value
        if name == "escape":
            if value not in ("\\", "`"):
                raise _error(path, i + 1, f"escape directive must be \\ or `, got {value!r}")
            escape = value
        elif name == "syntax" and not re.match(r"^(docker\.io/)?docker/dockerfile(-upstream)?:1(\.\d+)*$", value):
            raise _error(path, i + 1, f"syntax {value!r}: orch reads the standard Dockerfile syntax "
                                      "(docker/dockerfile:1) itself, not a custom frontend")
        start = i + 1
    out: List[Instruction] = []
    i = start
    while i < len(lines):
        stripped = lines[i].strip()
        if not stripped or stripped.startswith("#"):
            i += 1
            continue
        first = i
        parts: List[str] = []
        text_line = lines[i].rstrip()
        while True:
            if text_line.endswith(escape):
                parts.append(text_line[:-1])
                i += 1
                # comment and empty lines inside a continued instruction are dropped
                while i < len(lines) and (not lines[i].strip() or lines[i].strip().startswith("#")):
                    i += 1
                if i >= len(lines):
                    break
                text_line = lines[i].rstrip()
                continue
            parts.append(text_line)
            i += 1
            break
        out.append(_instruction(path, first + 1, "".join(parts).strip(), escape))
    return Dockerfile(path=path, instructions=tuple(out), escape=escape)


def _instruction(path: str, line: int, text: str, escape: str) -> Instruction:
    m = re.match(r"^(\S+)\s*(.*)$", text, re.S)
    keyword, rest = m.group(1).upper(), m.group(2)
    if keyword not in _KNOWN:
        raise _error(path, line, f"unknown instruction {m.group(1)}")
    flags: List[Tuple[str, str]] = []
    while rest.startswith("--"):
        word, _, tail = rest.partition(" ")
        name, eq, value = word[2:].partition("=")
        flags.append((name.lower(), value if eq else ""))
        rest = tail.lstrip()
    if keyword in ("RUN", "COPY", "ADD") and _HEREDOC.search(rest):
        raise _error(path, line, "heredocs (<<EOF) are not supported by orch")
    exec_form = None
    if rest.startswith("["):
        try:
            value = json.loads(rest)
        except ValueError:
            value = None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            exec_form = tuple(value)
    return Instruction(line=line, keyword=keyword, flags=tuple(flags), args=rest, exec_form=exec_form)


# ---------------------------------------------------------------- words and $VAR substitution

def split_raw(text: str, escape: str = "\\") -> List[str]:
    """Split on unquoted whitespace, keeping quotes and escapes (Docker's name=value parsing)."""
    words, cur, quote, i = [], [], None, 0
    while i < len(text):
        c = text[i]
        if c == escape and i + 1 < len(text) and quote != "'":
            cur.append(text[i:i + 2])
            i += 2
            continue
        if quote:
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c.isspace():
            if cur:
                words.append("".join(cur))
                cur = []
            i += 1
            continue
        cur.append(c)
        i += 1
    if cur:
        words.append("".join(cur))
    return words


class _Lexer:
    """One word: quotes removed, escapes applied, ``$VAR`` expanded from ``env`` (None: no expansion)."""

    def __init__(self, text: str, env: Optional[Mapping[str, str]], escape: str, where):
        self.text, self.env, self.escape, self.where, self.i = text, env, escape, where, 0

    def word(self, stop: str = "") -> str:
        out: List[str] = []
        t = self.text
        while self.i < len(t):
            c = t[self.i]
            if c in stop:
                return "".join(out)
            if c == self.escape:
                if self.i + 1 < len(t):
                    out.append(t[self.i + 1])
                    self.i += 2
                else:
                    out.append(c)
                    self.i += 1
            elif c == "'":
                end = t.find("'", self.i + 1)
                if end < 0:
                    raise self.where("unterminated single quote")
                out.append(t[self.i + 1:end])
                self.i = end + 1
            elif c == '"':
                self.i += 1
                out.append(self._double())
            elif c == "$" and self.env is not None:
                out.append(self._dollar())
            else:
                out.append(c)
                self.i += 1
        if stop:
            raise self.where("missing '}' in a ${...} substitution")
        return "".join(out)

    def _double(self) -> str:
        out: List[str] = []
        t = self.text
        while self.i < len(t):
            c = t[self.i]
            if c == '"':
                self.i += 1
                return "".join(out)
            if c == self.escape and self.i + 1 < len(t) and t[self.i + 1] in ('"', "$", self.escape):
                out.append(t[self.i + 1])
                self.i += 2
            elif c == "$" and self.env is not None:
                out.append(self._dollar())
            else:
                out.append(c)
                self.i += 1
        raise self.where("unterminated double quote")

    def _name(self) -> str:
        start = self.i
        while self.i < len(self.text) and _NAME.match(self.text[self.i]):
            self.i += 1
        return self.text[start:self.i]

    def _dollar(self) -> str:
        self.i += 1
        t = self.text
        if self.i < len(t) and t[self.i] == "{":
            self.i += 1
            name = self._name()
            if not name:
                raise self.where("bad substitution: ${} needs a variable name")
            if self.i < len(t) and t[self.i] == "}":
                self.i += 1
                return self.env.get(name, "")
            op = t[self.i:self.i + 2] if t[self.i:self.i + 1] == ":" else t[self.i:self.i + 1]
            if op not in (":-", ":+", "-", "+"):
                raise self.where(f"unsupported substitution ${{{name}{t[self.i:self.i + 2]}...}}",
                                 hint="orch supports $VAR, ${VAR}, ${VAR:-word}, ${VAR:+word}, ${VAR-word}, ${VAR+word}")
            self.i += len(op)
            word = self.word(stop="}")
            self.i += 1
            value = self.env.get(name)
            if op == ":-":
                return value if value else word
            if op == "-":
                return value if value is not None else word
            if op == ":+":
                return word if value else ""
            return word if value is not None else ""
        name = self._name()
        if not name:
            return "$"
        return self.env.get(name, "")


def process_word(text: str, env: Optional[Mapping[str, str]], escape: str = "\\", where=None) -> str:
    return _Lexer(text, env, escape, where or _plain_error).word()


def process_words(text: str, env: Optional[Mapping[str, str]], escape: str = "\\", where=None) -> List[str]:
    return [process_word(w, env, escape, where) for w in split_raw(text, escape)]


def _plain_error(message: str, hint: Optional[str] = None) -> ManifestError:
    return ManifestError(message, hint=hint)


def name_values(text: str, env: Mapping[str, str], escape: str, where, keyword: str) -> List[Tuple[str, str]]:
    """``K=V K2="v 2"`` (or the legacy ``K value with spaces``) -> [(K, V)], values substituted."""
    words = split_raw(text, escape)
    if not words:
        raise where(f"{keyword} needs at least one name=value")
    if "=" not in words[0]:
        if keyword == "ARG":
            return [(w, None) for w in words]       # type: ignore[misc]
        if len(words) < 2:
            raise where(f"{keyword} {words[0]} needs a value")
        rest = text.strip()[len(words[0]):].strip()
        return [(words[0], process_word(rest, env, escape, where))]
    out = []
    for w in words:
        if "=" not in w:
            if keyword == "ARG":
                out.append((w, None))
                continue
            raise where(f"{keyword}: expected name=value, got {w!r}")
        k, _, v = w.partition("=")
        k = process_word(k, env, escape, where)
        if not k:
            raise where(f"{keyword}: empty name in {w!r}")
        out.append((k, process_word(v, env, escape, where)))
    return out


def go_duration(text: str) -> float:
    """``30s``, ``1m30s``, ``500ms`` -> seconds (Docker's HEALTHCHECK durations)."""
    pos, total = 0, 0.0
    for m in _GO_DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _GO_UNIT[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"expected a duration like 30s or 1m30s, got {text!r}")
    return total


# ---------------------------------------------------------------- the plan

@dataclass(frozen=True)
class From:
    kind: str                               # scratch | stage | debian | registry
    ref: str = ""                           # the image as written (after substitution)
    stage: str = ""                         # kind stage: the earlier stage's name
    suite: str = ""                         # kind debian
    slim: bool = False
    registry_ref: str = ""                  # kind registry: HOST/REPO[:TAG][@DIGEST]


@dataclass(frozen=True)
class Run:
    line: int
    argv: Tuple[str, ...]
    env: Tuple[Tuple[str, str], ...]        # ENV and ARG values in scope (the base image's Env comes on top)
    workdir: str
    user: Optional[str]


@dataclass(frozen=True)
class Copy:
    line: int
    sources: Tuple[str, ...]                # as written (context-relative, or paths in a stage)
    dest: str                               # absolute; ends with "/" when it names a directory
    from_stage: Optional[str] = None
    chown: Optional[str] = None
    chmod: Optional[int] = None
    add: bool = False


@dataclass(frozen=True)
class Mkdir:
    line: int
    path: str


@dataclass(frozen=True)
class Health:
    command: Tuple[str, ...]                # () for HEALTHCHECK NONE
    interval: float = 30.0
    timeout: float = 30.0
    start_period: float = 0.0
    retries: int = 3
    line: int = 0


@dataclass
class Stage:
    index: int
    name: str                               # the AS name, or the index as text
    line: int
    base: From
    platform: str                           # the platform this stage is built for
    packages: List[str] = field(default_factory=list)       # apt-get install -> the Debian base
    steps: List[object] = field(default_factory=list)       # Run | Copy | Mkdir
    env: Dict[str, str] = field(default_factory=dict)       # ENV set in this stage (or inherited from a stage base)
    args: Dict[str, str] = field(default_factory=dict)
    workdir: Optional[str] = None
    user: Optional[str] = None
    shell: Tuple[str, ...] = DEFAULT_SHELL
    cmd: Optional[Tuple[str, ...]] = None
    entrypoint: Optional[Tuple[str, ...]] = None
    labels: Dict[str, str] = field(default_factory=dict)
    expose: List[str] = field(default_factory=list)
    stop_signal: Optional[str] = None
    health: Optional[Health] = None
    depends: List[str] = field(default_factory=list)        # stages this one reads (FROM, COPY --from)


def platform_args(target: str, build: str) -> Dict[str, str]:
    def parts(p: str) -> Tuple[str, str, str]:
        bits = p.split("/")
        return bits[0], bits[1] if len(bits) > 1 else "", bits[2] if len(bits) > 2 else ""
    t, b = parts(target), parts(build)
    return {"TARGETPLATFORM": target, "TARGETOS": t[0], "TARGETARCH": t[1], "TARGETVARIANT": t[2],
            "BUILDPLATFORM": build, "BUILDOS": b[0], "BUILDARCH": b[1], "BUILDVARIANT": b[2]}


def declared_args(df: Dockerfile) -> List[str]:
    """Every ARG name the Dockerfile declares (to refuse build args nobody reads)."""
    names = []
    for ins in df.instructions:
        if ins.keyword == "ARG":
            for w in split_raw(ins.args, df.escape):
                names.append(w.partition("=")[0])
    return names


def plan(df: Dockerfile, platform: str, build_args: Optional[Mapping[str, str]] = None,
         target: Optional[str] = None, build_platform: str = "linux/amd64") -> List[Stage]:
    """The stages needed for ``target`` (default: the last stage), in build order; the last is the image."""
    build_args = dict(build_args or {})
    path, esc = df.path, df.escape

    def where_at(line: int):
        return lambda message, hint=None: _error(path, line, message, hint)

    auto = platform_args(platform, build_platform)
    global_args: Dict[str, str] = dict(auto)
    stages: List[Stage] = []
    by_name: Dict[str, Stage] = {}
    st: Optional[Stage] = None
    for ins in df.instructions:
        where = where_at(ins.line)
        allowed = _FLAGS.get(ins.keyword, set())
        for name, _ in ins.flags:
            if name not in allowed:
                raise where(f"{ins.keyword} --{name} is not supported by orch",
                            hint=f"{ins.keyword} takes {', '.join('--' + f for f in sorted(allowed)) or 'no flags'}"
                            if allowed else None)
        flags = dict(ins.flags)
        if ins.keyword in _REFUSED and _REFUSED[ins.keyword]:
            raise where(_REFUSED[ins.keyword])
        if ins.keyword == "ARG" and st is None:
            for k, v in name_values(ins.args, global_args, esc, where, "ARG"):
                global_args[k] = build_args[k] if k in build_args else (v if v is not None else global_args.get(k, ""))
            continue
        if ins.keyword == "FROM":
            st = _from(ins, flags, stages, by_name, global_args, platform, build_platform, where, esc)
            stages.append(st)
            by_name[st.name] = st
            continue
        if st is None:
            raise where(f"{ins.keyword} before the first FROM (only ARG may come first)")
        scope = dict(st.args)
        scope.update(st.env)
        _stage_instruction(st, ins, flags, scope, global_args, build_args, by_name, where, esc)
    if not stages:
        raise _error(path, None, "no FROM instruction")
    final = stages[-1]
    if target is not None:
        final = by_name.get(target.lower())
        if final is None:
            names = ", ".join(s.name for s in stages)
            raise _error(path, None, f"no stage named {target!r} (stages: {names})")
    if final.platform != platform:
        raise _error(path, final.line, f"the image's stage is built for {final.platform}, not {platform}")
    needed: List[str] = []

    def need(name: str) -> None:
        if name in needed:
            return
        for dep in by_name[name].depends:
            need(dep)
        needed.append(name)
    need(final.name)
    return [by_name[n] for n in needed]


def _from(ins: Instruction, flags, stages, by_name, global_args, platform, build_platform, where, esc) -> Stage:
    words = process_words(ins.args, global_args, esc, where)
    name = str(len(stages))
    if len(words) == 3 and words[1].upper() == "AS":
        name = words[2].lower()
        if not _STAGE.match(name) or name.isdigit():
            raise where(f"bad stage name {words[2]!r}")
        if name in by_name:
            raise where(f"stage {name!r} defined twice (first at line {by_name[name].line})")
    elif len(words) != 1:
        raise where("expected FROM IMAGE [AS NAME]")
    ref = words[0]
    stage_platform = platform
    if "platform" in flags:
        wanted = process_word(flags["platform"], global_args, esc, where)
        if wanted not in ("linux/amd64", "linux/arm64", "linux/arm/v7"):
            raise where(f"FROM --platform={wanted}: orch builds linux/amd64, linux/arm64 and linux/arm/v7")
        stage_platform = wanted
    st = Stage(index=len(stages), name=name, line=ins.line, base=_resolve_from(ref, by_name, where),
               platform=stage_platform)
    if st.base.kind == "stage":
        parent = by_name[st.base.stage]
        if parent.platform != stage_platform:
            raise where(f"stage {parent.name!r} is built for {parent.platform}, this one for {stage_platform}")
        st.env, st.workdir, st.user, st.shell = dict(parent.env), parent.workdir, parent.user, parent.shell
        st.depends.append(parent.name)
    return st


def _resolve_from(ref: str, by_name, where) -> From:
    if ref.lower() in by_name:
        return From(kind="stage", ref=ref, stage=ref.lower())
    if ref == "scratch":
        return From(kind="scratch", ref=ref)
    m = re.match(r"^(?:(?:docker\.io|index\.docker\.io|registry-1\.docker\.io)/)?(?:library/)?debian(?::([^@]+))?(@.*)?$", ref)
    if m:
        tag = m.group(1)
        if not tag or m.group(2):
            raise where(f"FROM {ref}: name a Debian suite, e.g. debian:bookworm or debian:bookworm-slim",
                        hint="orch makes Debian bases itself (mmdebstrap), pinned in orch.lock")
        slim = tag.endswith("-slim")
        suite = tag[:-5] if slim else tag
        suite = DEBIAN_NUMBERS.get(suite, suite)
        if not _SUITE.match(suite) or suite == "latest":
            raise where(f"FROM {ref}: expected debian:SUITE or debian:SUITE-slim (SUITE like bookworm or 12)")
        return From(kind="debian", ref=ref, suite=suite, slim=slim)
    first, sep, rest = ref.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return From(kind="registry", ref=ref, registry_ref=ref)
    repo = ref if sep else f"library/{ref}"
    if not re.match(r"^[a-z0-9]+(?:[._/-][a-z0-9]+)*(?::[\w][\w.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$", repo):
        raise where(f"FROM {ref}: not an image reference")
    return From(kind="registry", ref=ref, registry_ref=f"registry-1.docker.io/{repo}")


def _stage_instruction(st: Stage, ins: Instruction, flags, scope, global_args, build_args, by_name,
                       where, esc) -> None:
    k = ins.keyword
    if k == "ARG":
        for name, default in name_values(ins.args, scope, esc, where, "ARG"):
            if name in build_args:
                value = build_args[name]
            elif default is not None:
                value = default
            else:
                value = global_args.get(name, "")
            st.args[name] = value
            scope[name] = value
    elif k == "ENV":
        for name, value in name_values(ins.args, scope, esc, where, "ENV"):
            st.env[name] = value
    elif k == "LABEL":
        for name, value in name_values(ins.args, scope, esc, where, "LABEL"):
            st.labels[name] = value
    elif k == "MAINTAINER":
        st.labels["maintainer"] = ins.args.strip()
    elif k == "WORKDIR":
        value = process_word(ins.args.strip(), scope, esc, where)
        if not value:
            raise where("WORKDIR needs a path")
        st.workdir = posixpath.normpath(posixpath.join(st.workdir or "/", value))
        st.steps.append(Mkdir(ins.line, st.workdir))
    elif k == "USER":
        value = process_word(ins.args.strip(), scope, esc, where)
        if not value or " " in value:
            raise where("USER needs one user[:group]")
        st.user = value
    elif k == "SHELL":
        if not ins.exec_form:
            raise where('SHELL needs the JSON form, e.g. SHELL ["/bin/bash", "-c"]')
        st.shell = ins.exec_form
    elif k in ("CMD", "ENTRYPOINT"):
        argv = ins.exec_form if ins.exec_form is not None else st.shell + (ins.args,)
        if k == "CMD":
            st.cmd = argv
        else:
            st.entrypoint = argv
    elif k == "EXPOSE":
        for w in process_words(ins.args, scope, esc, where):
            m = re.fullmatch(r"(\d+)(?:-(\d+))?(?:/(tcp|udp))?", w.lower())
            if not m or not 1 <= int(m.group(1)) <= int(m.group(2) or m.group(1)) <= 65535:
                raise where(f"EXPOSE: expected a port like 80, 80/tcp or 8000-8010/udp, got {w!r}")
            for port in range(int(m.group(1)), int(m.group(2) or m.group(1)) + 1):
                spec = f"{port}/{m.group(3) or 'tcp'}"
                if spec not in st.expose:
                    st.expose.append(spec)
    elif k == "STOPSIGNAL":
        value = process_word(ins.args.strip(), scope, esc, where)
        if not _SIGNAL.match(value):
            raise where(f"STOPSIGNAL: expected a signal like SIGTERM or 15, got {value!r}")
        st.stop_signal = value
    elif k == "HEALTHCHECK":
        st.health = _healthcheck(ins, flags, st, where)
    elif k == "RUN":
        _run(st, ins, flags, scope, where)
    elif k in ("COPY", "ADD"):
        _copy(st, ins, flags, scope, by_name, where, esc)


def _healthcheck(ins: Instruction, flags, st: Stage, where) -> Health:
    word, _, rest = ins.args.partition(" ")
    rest = rest.strip()
    if word.upper() == "NONE":
        if rest or flags:
            raise where("HEALTHCHECK NONE takes nothing else")
        return Health(command=(), line=ins.line)
    if word.upper() != "CMD" or not rest:
        raise where("expected HEALTHCHECK [OPTIONS] CMD command, or HEALTHCHECK NONE")
    exec_form = None
    if rest.startswith("["):
        try:
            value = json.loads(rest)
            if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                exec_form = tuple(value)
        except ValueError:
            pass
    command = exec_form if exec_form is not None else st.shell + (rest,)
    kw: Dict[str, object] = {}
    for flag, key in (("interval", "interval"), ("timeout", "timeout"), ("start-period", "start_period")):
        if flag in flags:
            try:
                kw[key] = go_duration(flags[flag])
            except ValueError as exc:
                raise where(f"HEALTHCHECK --{flag}: {exc}") from None
    if "retries" in flags:
        if not flags["retries"].isdigit() or int(flags["retries"]) < 1:
            raise where(f"HEALTHCHECK --retries: expected a number >= 1, got {flags['retries']!r}")
        kw["retries"] = int(flags["retries"])
    return Health(command=command, line=ins.line, **kw)   # type: ignore[arg-type]


def _run(st: Stage, ins: Instruction, flags, scope, where) -> None:
    if flags.get("network", "default") not in ("default", "none"):
        raise where(f"RUN --network={flags['network']}: orch runs build steps without network")
    if ins.exec_form is not None:
        if not ins.exec_form:
            raise where("RUN needs a command")
        argv = ins.exec_form
        if posixpath.basename(argv[0]) in ("apt-get", "apt"):
            raise where("RUN apt-get in exec form: write it in shell form so orch can read it")
    else:
        if not ins.args.strip():
            raise where("RUN needs a command")
        packages, rest = apt_packages(ins.args, where)
        if packages is not None:
            if st.base.kind != "debian":
                raise where("RUN apt-get install: orch builds without network, so packages come with "
                            "FROM debian:SUITE (this stage is FROM " + (st.base.ref or st.base.kind) + ")")
            for p in packages:
                if p not in st.packages:
                    st.packages.append(p)
            if rest is None:
                return
        argv = st.shell + (rest if packages is not None else ins.args,)
    env = dict(st.args)
    env.update(st.env)
    st.steps.append(Run(ins.line, tuple(argv), tuple(sorted(env.items())), st.workdir or "/", st.user))


def _copy(st: Stage, ins: Instruction, flags, scope, by_name, where, esc) -> None:
    k = ins.keyword
    if ins.exec_form is not None:
        words = [_expand_plain(w, scope, where) for w in ins.exec_form]
    else:
        words = process_words(ins.args, scope, esc, where)
    if len(words) < 2:
        raise where(f"{k} needs a source and a destination")
    sources, dest = tuple(words[:-1]), words[-1]
    for s in sources:
        if re.match(r"^[a-z][a-z0-9+.-]*://", s) or s.startswith("git@"):
            raise where(f"{k} {s}: orch builds without network; fetch it into the build context first")
    is_dir = dest.endswith("/") or len(sources) > 1 or any(_is_glob(s) for s in sources)
    dest = posixpath.normpath(posixpath.join(st.workdir or "/", dest))
    if is_dir and not dest.endswith("/"):
        dest += "/"
    from_stage = None
    if "from" in flags:
        wanted = process_word(flags["from"], scope, esc, where).lower()
        if wanted.isdigit() and int(wanted) < len(by_name) + 1:
            match = [s for s in by_name.values() if s.index == int(wanted)]
            wanted = match[0].name if match else wanted
        if wanted not in by_name:
            raise where(f"COPY --from={wanted}: no earlier stage of that name",
                        hint="orch copies from earlier stages only, not from other images")
        if wanted == st.name:
            raise where("COPY --from names the stage itself")
        from_stage = wanted
        if wanted not in st.depends:
            st.depends.append(wanted)
    chown = process_word(flags["chown"], scope, esc, where) if "chown" in flags else None
    if chown is not None and not re.match(r"^[A-Za-z0-9_.-]+(:[A-Za-z0-9_.-]+)?$", chown):
        raise where(f"{k} --chown: expected user[:group], got {chown!r}")
    chmod = None
    if "chmod" in flags:
        value = flags["chmod"]
        if not re.fullmatch(r"[0-7]{3,4}", value):
            raise where(f"{k} --chmod: expected octal permission bits like 0755, got {value!r}")
        chmod = int(value, 8)
    st.steps.append(Copy(ins.line, sources, dest, from_stage, chown, chmod, add=(k == "ADD")))


def _expand_plain(word: str, scope, where) -> str:
    """A JSON-form COPY argument: $VAR substitution only (quotes are literal there)."""
    out, lex = [], _Lexer(word, scope, "\x00", where)
    while lex.i < len(word):
        if word[lex.i] == "$":
            out.append(lex._dollar())
        else:
            out.append(word[lex.i])
            lex.i += 1
    return "".join(out)


def _is_glob(s: str) -> bool:
    return any(c in s for c in "*?[")
