"""Layers of the Dockerfile steps: COPY/ADD from the context, COPY --from a stage, WORKDIR.

Modes are normalised as for ``copy`` steps (0755 when executable, else 0644; directories
0755) unless ``--chmod`` says otherwise, so digests do not depend on a machine's umask.
``--chown`` and ``USER`` names are looked up in the image's own ``/etc/passwd`` and
``/etc/group``; paths inside an unpacked stage are resolved as if it were the root
(symlinks never lead out of it).
"""
from __future__ import annotations

import hashlib
import os
import posixpath
import re
import stat
from typing import Dict, List, Optional, Sequence, Set, Tuple

from orchestrator.errors import BuildError
from orchestrator.image.layer import Entry, ancestor_dirs
from orchestrator.image.store import Store
from orchestrator.manifest.model import ContextCopyStep, MkdirStep, StageCopyStep
from runtime import unpack
from runtime.errors import AgentFailure, UnsafeImage

MAX_TEXT = 4 << 20          # /etc/passwd or /etc/group of a base, read for USER and --chown


def _file_hash(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def inputs(step) -> Dict:
    """What a Dockerfile step's layer depends on besides its parent chain (cache key part)."""
    if isinstance(step, ContextCopyStep):
        files = []
        for kind, path, source in step.files:
            if kind == "file":
                files.append([kind, path, int(bool(os.stat(source).st_mode & 0o111)), _file_hash(source)])
            else:
                files.append([kind, path, source])
        return {"context-copy": files, "owner": step.owner, "mode": step.mode}
    if isinstance(step, StageCopyStep):
        return {"stage-copy": list(step.sources), "dest": step.dest, "owner": step.owner, "mode": step.mode}
    if isinstance(step, MkdirStep):
        return {"mkdir": step.path}
    raise TypeError(step)


# ---------------------------------------------------------------- users and groups

def _table(text: str) -> List[List[str]]:
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def owner_ids(spec: str, passwd: str, group: str) -> Tuple[int, int]:
    """``user[:group]`` (names or numbers) -> (uid, gid), names from the image's passwd/group."""
    user, _, grp = spec.partition(":")
    if user.isdigit():
        uid, gid = int(user), None
        for row in _table(passwd):
            if len(row) > 3 and row[2] == user:
                gid = int(row[3])
                break
    else:
        row = next((r for r in _table(passwd) if r[0] == user and len(r) > 3), None)
        if row is None:
            raise BuildError(f"user {user!r} is not in the image's /etc/passwd")
        uid, gid = int(row[2]), int(row[3])
    if grp:
        if grp.isdigit():
            gid = int(grp)
        else:
            row = next((r for r in _table(group) if r[0] == grp and len(r) > 2), None)
            if row is None:
                raise BuildError(f"group {grp!r} is not in the image's /etc/group")
            gid = int(row[2])
    return uid, gid if gid is not None else uid


def numeric(spec: Optional[str]) -> bool:
    return spec is None or bool(re.fullmatch(r"\d+(:\d+)?", spec))


def read_from_layers(store: Store, layers: Sequence[Dict], paths):
    """The text of ``paths`` (one, e.g. ``etc/passwd``, or several: then {path: text}) as the
    layers stack them ("" when absent), in one pass over the layers."""
    if isinstance(paths, str):
        return read_from_layers(store, layers, (paths,))[paths]
    found = {p: "" for p in paths}
    for layer in layers:
        try:     # a base's layer is hostile input: read through the runtime's guarded reader
            with store.open_blob(layer["digest"]) as raw:
                for tar, member in unpack.entries(raw):
                    name = member.name[2:] if member.name.startswith("./") else member.name.strip("/")
                    for path in paths:
                        head, base = posixpath.split(path)
                        if name in (f"{head}/.wh.{base}", f"{head}/.wh..wh..opq"):
                            found[path] = ""
                        elif name == path and member.isfile():
                            if member.size > MAX_TEXT:
                                raise UnsafeImage(f"{path} is larger than {MAX_TEXT} bytes")
                            fh = tar.extractfile(member)
                            found[path] = fh.read().decode(errors="replace") if fh else ""
        except AgentFailure as exc:
            raise BuildError(f"layer {layer['digest']}: {exc.message}") from None
    return found


def layer_owner(store: Store, layers: Sequence[Dict], spec: Optional[str]) -> Tuple[int, int]:
    if spec is None:
        return 0, 0
    if numeric(spec):
        user, _, grp = spec.partition(":")
        return int(user), int(grp or user)
    texts = read_from_layers(store, layers, ("etc/passwd", "etc/group"))
    return owner_ids(spec, texts["etc/passwd"], texts["etc/group"])


def root_owner(root: str, spec: Optional[str]) -> Tuple[int, int]:
    """(uid, gid) of ``spec`` in an unpacked root (a RUN step's USER)."""
    if spec is None:
        return 0, 0

    def read(p: str) -> str:
        try:
            with open(resolve_in_root(root, p), errors="replace") as fh:
                return fh.read()
        except OSError:
            return ""
    return owner_ids(spec, read("/etc/passwd"), read("/etc/group"))


# ---------------------------------------------------------------- entries

def _mode(st_mode: int, wanted: Optional[int]) -> int:
    if wanted is not None:
        return wanted
    return 0o755 if st_mode & 0o111 else 0o644


def context_entries(step: ContextCopyStep, existing: Set[str], uid: int, gid: int) -> List[Entry]:
    out: List[Entry] = []
    for kind, path, source in step.files:
        name = path.strip("/")
        if not name:
            continue
        if kind == "dir":
            out.append(Entry(name, "dir", step.mode if step.mode is not None else 0o755, uid, gid))
        elif kind == "symlink":
            out.append(Entry(name, "symlink", 0o777, uid, gid, linkname=source))
        else:
            out.append(Entry(name, "file", _mode(os.stat(source).st_mode, step.mode), uid, gid, source=source))
    have = existing | {e.path for e in out}
    parents: List[Entry] = []
    for e in out:
        for d in ancestor_dirs(e.path, have):
            have.add(d.path)
            parents.append(d)
    return parents + out


def mkdir_entries(step: MkdirStep, existing: Set[str]) -> List[Entry]:
    name = step.path.strip("/")
    if not name or name in existing:
        return []
    return ancestor_dirs(name, existing) + [Entry(name, "dir", 0o755)]


def resolve_in_root(root: str, path: str, follow_last: bool = True) -> str:
    """The host path of ``path`` inside ``root``, following symlinks as if ``root`` were ``/``."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    done: List[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = os.path.join(root, *done, part)
        if os.path.islink(candidate) and (parts or follow_last):
            hops += 1
            if hops > 40:
                raise BuildError(f"too many symlinks resolving {path}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        done.append(part)
    return os.path.join(root, *done)


def _glob(root: str, pattern: str) -> List[str]:
    """Absolute in-image paths below ``root`` matching a glob (each component matched on its own)."""
    import fnmatch
    found = ["/"]
    for part in [p for p in pattern.split("/") if p]:
        nxt = []
        for base in found:
            host = resolve_in_root(root, base)
            if not os.path.isdir(host):
                continue
            for n in sorted(os.listdir(host)):
                if fnmatch.fnmatchcase(n, part):
                    nxt.append(posixpath.join(base, n))
        found = nxt
    return found


def stage_entries(step: StageCopyStep, root: str, existing: Set[str], uid: int, gid: int) -> List[Entry]:
    """Entries copying ``step.sources`` from an unpacked stage at ``root``."""
    sources: List[str] = []
    for src in step.sources:
        absolute = posixpath.normpath("/" + src)
        if any(c in absolute for c in "*?["):
            hits = _glob(root, absolute)
            if not hits:
                raise BuildError(f"{step.label}: nothing in stage {step.stage!r} matches {src}")
            sources += hits
        else:
            if not os.path.lexists(resolve_in_root(root, absolute)):
                raise BuildError(f"{step.label}: {src} does not exist in stage {step.stage!r}")
            sources.append(absolute)
    out: List[Entry] = []
    for src in sources:
        host = resolve_in_root(root, src)
        if os.path.isdir(host):
            base = step.dest.rstrip("/")
            if base:
                out.append(Entry(base.strip("/"), "dir", 0o755, uid, gid))
            for dirpath, dirnames, filenames in os.walk(host):
                dirnames.sort()
                rel_dir = os.path.relpath(dirpath, host)
                for n in sorted(dirnames + filenames):
                    rel = os.path.normpath(os.path.join(rel_dir, n))
                    out.append(_stage_entry(os.path.join(dirpath, n), f"{base}/{rel}".strip("/"), step, uid, gid))
        else:
            target = step.dest + posixpath.basename(src) if step.dest.endswith("/") else step.dest
            out.append(_stage_entry(host, target.strip("/"), step, uid, gid))
    have = existing | {e.path for e in out}
    parents: List[Entry] = []
    for e in out:
        for d in ancestor_dirs(e.path, have):
            have.add(d.path)
            parents.append(d)
    return parents + out


def _stage_entry(full: str, name: str, step: StageCopyStep, uid: int, gid: int) -> Entry:
    st = os.lstat(full)
    if stat.S_ISLNK(st.st_mode):
        return Entry(name, "symlink", 0o777, uid, gid, linkname=os.readlink(full))
    if stat.S_ISDIR(st.st_mode):
        return Entry(name, "dir", 0o755, uid, gid)
    if stat.S_ISREG(st.st_mode):
        return Entry(name, "file", _mode(st.st_mode, step.mode), uid, gid, source=full)
    raise BuildError(f"{step.label}: {name} is not a regular file, directory or symlink")
