"""A Dockerfile's build context, and its plan turned into orch's image model.

``Ignore`` reads ``.dockerignore`` (Docker's patterns: ``*``, ``?``, ``[...]``, ``**``, ``!``
exceptions, last match wins, a matching parent directory excludes what is below it).
``context_files`` resolves the sources of one COPY/ADD against the context (globs, a
directory copies its contents), refusing paths that leave the context. ``dockerfile_image``
reads the Dockerfile and returns the ``ImageSpec`` and the HEALTHCHECK for every platform.
Reads files; changes nothing.
"""
from __future__ import annotations

import os
import posixpath
import re
import stat
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from orchestrator.errors import ManifestError
from orchestrator.image import dockerfile as D
from orchestrator.manifest.model import (ContextCopyStep, DebianBase, DockerfileSpec, HealthCheck, ImageConfig,
                                         ImageSpec, MkdirStep, RegistryBase, RunStep, ScratchBase, Stage,
                                         StageBase, StageCopyStep, frozen_map)

_ARCHIVE_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")


def _pattern(p: str) -> "re.Pattern[str]":
    out, i = ["^"], 0
    while i < len(p):
        c = p[i]
        if p.startswith("**", i):
            i += 2
            if p[i:i + 1] == "/":
                out.append("(?:.*/)?")
                i += 1
            else:
                out.append(".*")
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = p.find("]", i + 2)
            if j < 0:
                out.append(re.escape(c))
            else:
                body = p[i + 1:j]
                if body[:1] in ("!", "^"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = j + 1
                continue
        elif c == "\\" and i + 1 < len(p):
            out.append(re.escape(p[i + 1]))
            i += 2
            continue
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + "$")


class Ignore:
    """``.dockerignore`` of a context: ``excluded(rel)`` for a slash-separated relative path."""

    def __init__(self, lines: Sequence[str] = ()):
        self.rules: List[Tuple[bool, "re.Pattern[str]"]] = []
        for raw in lines:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            keep = line.startswith("!")
            line = line[1:].strip() if keep else line
            line = posixpath.normpath(line).lstrip("/")
            if line in ("", "."):
                continue
            self.rules.append((keep, _pattern(line)))
        self.has_exceptions = any(keep for keep, _ in self.rules)

    @classmethod
    def of(cls, context: str) -> "Ignore":
        path = os.path.join(context, ".dockerignore")
        if not os.path.isfile(path):
            return cls()
        with open(path, encoding="utf-8", errors="replace") as fh:
            return cls(fh.read().splitlines())

    def excluded(self, rel: str) -> bool:
        parts = rel.split("/")
        candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        out = False
        for keep, rx in self.rules:
            if any(rx.match(c) for c in candidates):
                out = not keep
        return out


def _walk(root: str, ignore: Ignore) -> List[str]:
    """Every relative path below ``root`` that .dockerignore keeps, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        keep_dirs = []
        for d in sorted(dirnames):
            rel = f"{rel_dir}/{d}" if rel_dir else d
            if ignore.excluded(rel) and not ignore.has_exceptions:
                continue
            keep_dirs.append(d)
        dirnames[:] = keep_dirs
        for n in dirnames + filenames:
            rel = f"{rel_dir}/{n}" if rel_dir else n
            if not ignore.excluded(rel):
                out.append(rel)
    return sorted(out)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def context_files(context: str, sources: Sequence[str], dest: str, ignore: Ignore, where,
                  add: bool = False, listing: Optional[List[str]] = None) -> List[Tuple[str, str, str]]:
    """(kind, path in the image, source or link target) for one COPY/ADD from the context."""
    root = os.path.realpath(context)
    files: List[Tuple[str, str, str]] = []
    matched: List[Tuple[str, str]] = []           # (context-relative path, its real path)
    for src in sources:
        norm = posixpath.normpath(src.lstrip("/")) if src.strip("/") else "."
        if norm == ".." or norm.startswith("../"):
            raise where(f"{src}: outside the build context")
        if any(c in norm for c in "*?["):
            rx = _pattern(norm)
            if listing is None:
                listing = _walk(root, ignore)
            hits = [r for r in listing if rx.match(r)]
            if not hits:
                raise where(f"{src}: no file in the build context matches")
            matched += [(h, os.path.join(root, h)) for h in hits]
            continue
        full = root if norm == "." else os.path.join(root, norm)
        if not os.path.lexists(full) or (norm != "." and ignore.excluded(norm)):
            raise where(f"{src}: no such file in the build context" +
                        (" (excluded by .dockerignore)" if os.path.lexists(full) else ""))
        matched.append((norm, full))
    for rel, full in matched:
        real = os.path.realpath(full)
        if not _inside(real, root):
            raise where(f"{rel}: a symlink leading outside the build context ({real})")
        if os.path.isdir(real):
            base = dest.rstrip("/")
            files.append(("dir", base or "/", ""))
            sub = Ignore()
            for inner in _walk(real, sub):
                ctx_rel = inner if rel == "." else f"{rel}/{inner}"
                if ignore.excluded(ctx_rel):
                    continue
                files.append(_entry(os.path.join(real, inner), f"{base}/{inner}", where, ctx_rel))
        elif os.path.isfile(real):
            target = dest + posixpath.basename(rel) if dest.endswith("/") else dest
            if add and _is_archive(real):
                raise where(f"ADD {rel}: orch does not unpack archives with ADD",
                            hint="unpack it in a RUN step, or COPY it")
            files.append(("file", target, real))
        else:
            raise where(f"{rel}: not a regular file or directory")
    return files


def _entry(full: str, image_path: str, where, rel: str) -> Tuple[str, str, str]:
    st = os.lstat(full)
    if stat.S_ISLNK(st.st_mode):
        return ("symlink", image_path, os.readlink(full))
    if stat.S_ISDIR(st.st_mode):
        return ("dir", image_path, "")
    if stat.S_ISREG(st.st_mode):
        return ("file", image_path, full)
    raise where(f"{rel}: not a regular file, directory or symlink")


def _is_archive(path: str) -> bool:
    import tarfile
    with open(path, "rb") as fh:
        head = fh.read(6)
    return head.startswith(_ARCHIVE_MAGIC) or tarfile.is_tarfile(path)


# ---------------------------------------------------------------- plan -> model

def dockerfile_image(path: str, display: str, context: str, platforms: Sequence[str],
                     args: Mapping[str, str], target: Optional[str], build_platform: str,
                     arg_error, name: str = "Dockerfile") -> ImageSpec:
    """The ImageSpec of a Dockerfile build. ``display`` names the file in errors; ``name`` (its
    path from the manifest's directory) in step labels, which reach the image history, so the
    digests do not depend on where orch runs. ``arg_error(name)`` locates an unread build arg."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read {display}: {exc}") from None
    df = D.parse(text, display)
    declared = set(D.declared_args(df))
    for name in args:
        if name not in declared and name not in D.PROXY_ARGS:
            raise arg_error(name)
    ignore = Ignore.of(context)
    per_platform: Dict[str, Tuple[Stage, ...]] = {}
    health = None
    listing: Optional[List[str]] = None
    for platform in platforms:
        stages = D.plan(df, platform, args, target, build_platform)
        if listing is None:
            listing = _walk(os.path.realpath(context), ignore)
        per_platform[platform] = tuple(_stage(s, display, name, context, ignore, listing) for s in stages)
        if health is None and stages[-1].health is not None:
            health = _health(stages[-1].health)
    first = per_platform[platforms[0]][-1]
    return ImageSpec(base=first.base, platforms=tuple(platforms), steps=first.steps, config=first.config,
                     dockerfile=DockerfileSpec(path=display, stages=frozen_map(per_platform)), health=health)


def _base(f: "D.From", packages: Sequence[str]):
    if f.kind == "scratch":
        return ScratchBase()
    if f.kind == "stage":
        return StageBase(stage=f.stage)
    if f.kind == "debian":
        return DebianBase(suite=f.suite, packages=tuple(sorted(set(packages))), variant="minbase", slim=f.slim)
    return RegistryBase(ref=f.registry_ref)


def _stage(s: "D.Stage", display: str, name: str, context: str, ignore: Ignore, listing: List[str]) -> Stage:
    steps = []
    for step in s.steps:
        where_line = step.line

        def where(message, hint=None, _line=where_line):
            return ManifestError(message, file=display, line=_line, hint=hint)
        label = f"{name}:{step.line}"
        if isinstance(step, D.Run):
            steps.append(RunStep(command=step.argv, env=frozen_map(dict(step.env)), workdir=step.workdir,
                                 user=step.user, env_only=True, label=f"{label} RUN {_short(step.argv)}"))
        elif isinstance(step, D.Mkdir):
            steps.append(MkdirStep(label=f"{label} WORKDIR {step.path}", path=step.path))
        elif step.from_stage is not None:
            steps.append(StageCopyStep(label=f"{label} COPY --from={step.from_stage} {' '.join(step.sources)} "
                                       f"{step.dest}", stage=step.from_stage, sources=step.sources,
                                       dest=step.dest, owner=step.chown, mode=step.chmod))
        else:
            kw = "ADD" if step.add else "COPY"
            files = context_files(context, step.sources, step.dest, ignore, where, step.add, listing)
            steps.append(ContextCopyStep(label=f"{label} {kw} {' '.join(step.sources)} {step.dest}",
                                         files=tuple(files), owner=step.chown, mode=step.chmod))
    config = ImageConfig(env=frozen_map(s.env), entrypoint=s.entrypoint, cmd=s.cmd, workdir=s.workdir,
                         user=s.user, labels=frozen_map(s.labels), expose=tuple(s.expose),
                         stop_signal=s.stop_signal)
    return Stage(name=s.name, base=_base(s.base, s.packages), steps=tuple(steps), config=config,
                 platform=s.platform)


def _short(argv: Sequence[str]) -> str:
    text = argv[-1] if len(argv) == 3 and argv[1] == "-c" else " ".join(argv)
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:57] + "..."


def _health(h: "D.Health") -> HealthCheck:
    if not h.command:
        return HealthCheck(kind="none")
    return HealthCheck(kind="exec", command=tuple(h.command), interval=h.interval, timeout=h.timeout,
                       retries=h.retries, start_period=h.start_period)
