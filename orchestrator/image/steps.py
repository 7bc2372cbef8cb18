"""``copy`` and ``template`` steps: their cache inputs and their layer entries.

Copied files get uid/gid 0 unless ``owner`` is set, mode 0755 when the source is executable
and 0644 otherwise unless ``mode`` is set; directories 0755; symlinks are kept as symlinks
(the loader already refused any that point out of the manifest directory).
"""
from __future__ import annotations

import hashlib
import os
import stat
from typing import Any, Dict, List, Set

from orchestrator.image.layer import Entry, ancestor_dirs
from orchestrator.manifest.model import CopyStep, RunStep, TemplateStep


def tree_hash(path: str) -> str:
    """sha256 over every path, type, exec bit and content below ``path`` (or of one file)."""
    h = hashlib.sha256()

    def add(rel: str, full: str) -> None:
        st = os.lstat(full)
        if stat.S_ISLNK(st.st_mode):
            h.update(f"L {rel} {os.readlink(full)}\n".encode())
        elif stat.S_ISDIR(st.st_mode):
            h.update(f"D {rel}\n".encode())
        else:
            fh_hash = hashlib.sha256()
            with open(full, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    fh_hash.update(chunk)
            h.update(f"F {rel} {int(bool(st.st_mode & 0o111))} {fh_hash.hexdigest()}\n".encode())

    if os.path.isdir(path):
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, path)
            for n in sorted(dirnames + filenames):
                add(os.path.normpath(os.path.join(rel_dir, n)), os.path.join(dirpath, n))
    else:
        add(".", path)
    return h.hexdigest()


def step_inputs(step) -> Dict[str, Any]:
    """What a step's layer depends on, besides its parent chain (part of its cache key)."""
    if isinstance(step, CopyStep):
        return {"copy": step.dest, "mode": step.mode, "owner": list(step.owner or ()),
                "dir": os.path.isdir(step.path), "content": tree_hash(step.path)}
    if isinstance(step, TemplateStep):
        return {"template": step.dest, "mode": step.mode, "owner": list(step.owner or ()),
                "content": hashlib.sha256(step.content).hexdigest()}
    if isinstance(step, RunStep):
        out = {"run": list(step.command), "env": sorted(step.env.items()), "sandbox": 1}
        if step.env_only:                           # a Dockerfile RUN: its own cwd, user and env
            out.update(workdir=step.workdir, user=step.user, env_only=True)
        return out
    from orchestrator.image import dockersteps
    return dockersteps.inputs(step)


def describe(step) -> str:
    if isinstance(step, CopyStep):
        return f"copy {step.src} -> {step.dest}"
    if isinstance(step, TemplateStep):
        return f"template {step.src} -> {step.dest}"
    if getattr(step, "label", ""):
        return step.label
    return "run " + " ".join(step.command)


def _file_mode(st_mode: int, wanted) -> int:
    if wanted is not None:
        return wanted
    return 0o755 if st_mode & 0o111 else 0o644


def copy_entries(step: CopyStep, existing: Set[str]) -> List[Entry]:
    uid, gid = step.owner or (0, 0)
    dest = step.dest.strip("/")
    out: List[Entry] = []
    if os.path.isdir(step.path):
        if dest:
            out.append(Entry(dest, "dir", 0o755, uid, gid))
        links: Dict[Any, str] = {}
        for dirpath, dirnames, filenames in os.walk(step.path):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, step.path)
            for n in sorted(dirnames + filenames):
                full = os.path.join(dirpath, n)
                rel = os.path.normpath(os.path.join(rel_dir, n))
                name = f"{dest}/{rel}" if dest else rel
                st = os.lstat(full)
                if stat.S_ISLNK(st.st_mode):
                    out.append(Entry(name, "symlink", 0o777, uid, gid, linkname=os.readlink(full)))
                elif stat.S_ISDIR(st.st_mode):
                    out.append(Entry(name, "dir", 0o755, uid, gid))
                elif stat.S_ISREG(st.st_mode):
                    key = (st.st_dev, st.st_ino)
                    mode = _file_mode(st.st_mode, step.mode)
                    if st.st_nlink > 1 and key in links:
                        out.append(Entry(name, "hardlink", mode, uid, gid, linkname=links[key]))
                    else:
                        links[key] = name
                        out.append(Entry(name, "file", mode, uid, gid, source=full))
    else:
        st = os.stat(step.path)
        out.append(Entry(dest, "file", _file_mode(st.st_mode, step.mode), uid, gid, source=step.path))
    return ancestor_dirs(step.dest, existing | {e.path for e in out}) + out


def template_entries(step: TemplateStep, existing: Set[str]) -> List[Entry]:
    uid, gid = step.owner or (0, 0)
    mode = step.mode if step.mode is not None else 0o644
    entry = Entry(step.dest.strip("/"), "file", mode, uid, gid, data=step.content)
    return ancestor_dirs(step.dest, existing) + [entry]
