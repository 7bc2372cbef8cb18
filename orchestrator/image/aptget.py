"""``RUN apt-get install ...`` in a Dockerfile -> the packages that join orch's Debian base (pure).

orch builds without network, so the apt commands at the head of a shell-form RUN are read
instead of run: ``apt-get update && apt-get install -y --no-install-recommends a b && rm -rf
/var/lib/apt/lists/*`` gives ``(["a", "b"], None)``; commands after them stay a RUN. What
cannot be honoured that way (versions, other suites, apt after other commands, apt in a pipe
or ``||``) is refused through the caller's ``where(message, hint)``.
"""
from __future__ import annotations

import posixpath
import re
import shlex
from typing import List, Optional, Tuple

_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_APT_OPTS_WITH_ARG = ("-o", "-t", "--target-release", "--option")
_APT_NOOP = ("update", "clean", "autoclean", "autoremove", "upgrade", "dist-upgrade", "full-upgrade")


def _top_level_separators(text: str) -> List[Tuple[int, int, str]]:
    """(start, end, token) of &&, ||, ;, | and newlines outside quotes (shell-ish)."""
    out, quote, i = [], None, 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\" and quote == '"':
                i += 2
                continue
            if c == quote:
                quote = None
        elif c == "\\":
            i += 2
            continue
        elif c in "'\"":
            quote = c
        elif text.startswith("&&", i) or text.startswith("||", i):
            out.append((i, i + 2, text[i:i + 2]))
            i += 2
            continue
        elif c in ";|\n":
            out.append((i, i + 1, c))
        i += 1
    return out


def apt_packages(command: str, where) -> Tuple[Optional[List[str]], Optional[str]]:
    """A shell-form RUN -> (packages of its leading apt-get commands or None, what is left to run).

    ``apt-get update && apt-get install -y --no-install-recommends a b && rm -rf /var/lib/apt/lists/*``
    -> (["a", "b"], None). The apt part must come first and be joined with ``&&`` or ``;``.
    """
    seps = _top_level_separators(command)
    bounds, start = [], 0
    for s, e, tok in seps:
        bounds.append((command[start:s], tok, e))
        start = e
    bounds.append((command[start:], "", len(command)))
    packages: Optional[List[str]] = None
    kept_prefix: List[str] = []
    for n, (segment, tok, end) in enumerate(bounds):
        kind, pkgs = _apt_segment(segment, where)
        prev_tok = bounds[n - 1][1] if n else ""
        if kind in ("install", "noop") and (tok in ("||", "|") or prev_tok in ("||", "|")):
            raise where("RUN: apt-get inside a pipe or || chain is not supported; join apt commands with &&")
        if kind == "install":
            packages = (packages or []) + [p for p in pkgs if p not in (packages or [])]
            continue
        if kind in ("noop", "empty") or (kind == "cleanup" and packages is not None):
            continue
        if kind == "set":
            kept_prefix.append(segment.strip())
            continue
        if packages is None:
            # the first real command comes before any apt-get install: the whole RUN runs as is,
            # unless an apt-get install follows (then it would need the network)
            for later, _tok, _e in bounds[n + 1:]:
                if _apt_segment(later, where)[0] == "install":
                    raise where("RUN: apt-get install after other commands; orch installs Debian packages "
                                "into the base (no network at build time)",
                                hint="put apt-get install first in the RUN, or in its own RUN")
            return None, None
        rest = command[bounds[n - 1][2] if n else 0:]
        for later, _tok, _e in bounds[n + 1:]:
            if _apt_segment(later, where)[0] == "install":
                raise where("RUN: apt-get install after other commands; orch installs Debian packages "
                            "into the base (no network at build time)",
                            hint="put apt-get install first in the RUN, or in its own RUN")
        prefix = "; ".join(kept_prefix)
        return packages, (f"{prefix}; {rest.strip()}" if prefix else rest.strip())
    return packages, None


def _apt_segment(segment: str, where) -> Tuple[str, List[str]]:
    """-> (kind, packages): install | noop | cleanup | set | empty | other."""
    try:
        words = shlex.split(segment)
    except ValueError:
        return "other", []
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        words = words[1:]
    if not words:
        return "empty", []
    if words[0] == "set":
        return "set", []
    if words[0] == "rm" and all(w.startswith("-") or w.startswith(("/var/lib/apt/lists", "/var/cache/apt"))
                                for w in words[1:]):
        return "cleanup", []
    if posixpath.basename(words[0]) not in ("apt-get", "apt"):
        return "other", []
    sub, names, i = None, [], 1
    while i < len(words):
        w = words[i]
        if w in _APT_OPTS_WITH_ARG:
            if w in ("-t", "--target-release"):
                raise where(f"RUN {words[0]} {w}: orch installs from the FROM suite only")
            i += 2
            continue
        if w.startswith("-"):
            if w.startswith(("--target-release=", "-t=")):
                raise where(f"RUN {words[0]} {w}: orch installs from the FROM suite only")
            i += 1
            continue
        if sub is None:
            sub = w
        else:
            names.append(w)
        i += 1
    if sub in _APT_NOOP:
        return "noop", []
    if sub != "install":
        raise where(f"RUN {words[0]} {sub or ''}: orch understands apt-get update, install and clean",
                    hint="orch builds without network; Debian packages come from FROM debian:SUITE")
    if not names:
        raise where(f"RUN {words[0]} install: no packages named")
    for p in names:
        if "=" in p or "/" in p:
            raise where(f"RUN apt-get install {p}: versions and suites come from orch.lock, name the package only")
        if not _PACKAGE.match(p):
            raise where(f"RUN apt-get install: {p!r} is not a Debian package name")
    return "install", names
