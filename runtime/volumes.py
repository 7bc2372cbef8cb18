"""Volumes on a host: the only state that outlives a container.

A volume belongs to its service (``volumes/_services/SERVICE/NAME``), so two services that both
say ``data:/data`` never share data by accident; a volume declared ``shared`` lives at
``volumes/_shared/NAME`` and every service naming it mounts the same directory. (Volume names
start with a letter or digit, so ``_services`` and ``_shared`` never clash with one.) A volume
an older agent kept at ``volumes/NAME`` moves to its owner the first time that service starts.
"""
from __future__ import annotations

import os
from typing import Dict, List

from runtime.layout import Layout

OWNED = "_services"
SHARED = "_shared"


def volume_path(layout: Layout, service: str, name: str, shared: bool) -> str:
    if shared:
        return os.path.join(layout.volumes, SHARED, name)
    return os.path.join(layout.volumes, OWNED, service, name)


def ensure_volume(layout: Layout, service: str, name: str, shared: bool) -> str:
    """The volume's directory, made if new (a legacy ``volumes/NAME`` is moved into place)."""
    path = volume_path(layout, service, name, shared)
    if not os.path.isdir(path):
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        legacy = os.path.join(layout.volumes, name)
        if os.path.isdir(legacy) and not os.path.islink(legacy):
            os.rename(legacy, path)        # same filesystem: atomic, nothing copied
        else:
            os.makedirs(path, mode=0o755, exist_ok=True)
    return path


def du(path: str) -> int:
    """Bytes used under ``path`` (allocated blocks, hard links counted once)."""
    total, seen = 0, set()
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def list_volumes(layout: Layout) -> List[Dict]:
    """Every volume on the host: name, owner service (None when shared), path, bytes."""
    out: List[Dict] = []
    owned = os.path.join(layout.volumes, OWNED)
    for service in sorted(os.listdir(owned)) if os.path.isdir(owned) else []:
        for name in sorted(os.listdir(os.path.join(owned, service))):
            p = os.path.join(owned, service, name)
            out.append({"name": name, "service": service, "path": p, "bytes": du(p)})
    shared = os.path.join(layout.volumes, SHARED)
    for name in sorted(os.listdir(shared)) if os.path.isdir(shared) else []:
        p = os.path.join(shared, name)
        out.append({"name": name, "service": None, "path": p, "bytes": du(p)})
    for name in sorted(os.listdir(layout.volumes)) if os.path.isdir(layout.volumes) else []:
        p = os.path.join(layout.volumes, name)
        if name not in (OWNED, SHARED) and os.path.isdir(p):
            out.append({"name": name, "service": None, "path": p, "bytes": du(p), "legacy": True})
    return out
