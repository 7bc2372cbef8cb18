"""User namespaces on the host side (``deploy: {userns: true}``).

With a user namespace the container's root is an unprivileged id of the host (its range from
``bundle.userns_base``), and the OCI runtime does the container's mounts as that id. So what it
must reach is handed over first: the container's directory, its secrets and the top of its
volumes become owned by the container's ids; the directories above them are made 0711 (search
only, no listing), while every container's own directory stays 0700; and the mount points
that a fresh image lacks are created inside the root beforehand, as the host's root, without
ever following a link of the image (the runtime could not create them in directories of the
image, which belong to the host's root).
"""
from __future__ import annotations

import os
from typing import Iterable, List, Tuple

from runtime.errors import BadRequest
from runtime.layout import Layout


def available() -> bool:
    try:
        with open("/proc/sys/user/max_user_namespaces") as f:
            return int(f.read().strip() or 0) > 0
    except (OSError, ValueError):
        return False


def hand_over(layout: Layout, d: str, vols: Iterable[Tuple[str, str, bool]],
              secs: Iterable[Tuple[str, str]], uid: int, gid: int, root: int) -> None:
    """Give a container's root (``root``) its directory, and its process (``uid``/``gid``) its
    secrets and volumes."""
    if not available():
        raise BadRequest("deploy.userns: this host's kernel has user namespaces turned off "
                         "(/proc/sys/user/max_user_namespaces is 0)")
    vols, secs = list(vols), list(secs)
    for parent in (layout.root, layout.containers) + ((layout.volumes,) if vols else ()) \
            + ((layout.run, layout.secrets) if secs else ()):
        if os.path.isdir(parent) and os.stat(parent).st_mode & 0o777 != 0o711:
            os.chmod(parent, 0o711)
    os.chown(d, root, root)
    for host, _dest, _ro in vols:
        os.chown(host, uid, gid)
    for path, _dest in secs:
        os.chown(os.path.dirname(path), uid, gid)
        os.chown(path, uid, gid)


def make_mountpoints(rootfs: str, mounts: List[dict]) -> None:
    """Create the mount points of ``mounts`` (config.json's) that are missing in ``rootfs``:
    a file for a bind mount of a file, a directory otherwise. Mounts under another mount
    (``/dev/pts`` under ``/dev``'s tmpfs) are the runtime's to make."""
    covered: List[str] = []
    for m in mounts:
        dest = m["destination"]
        if any(dest.startswith(c.rstrip("/") + "/") for c in covered):
            continue
        if m.get("type") != "bind":
            covered.append(dest)
        _make_inside(rootfs, dest, m.get("type") == "bind" and os.path.isfile(m["source"]))


def _make_inside(rootfs: str, dest: str, is_file: bool) -> None:
    parts = [p for p in dest.split("/") if p and p != "."]
    if not parts or ".." in parts:
        return
    fd = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i, name in enumerate(parts):
            file_here = is_file and i == len(parts) - 1
            flags = os.O_RDONLY | os.O_NOFOLLOW | (0 if file_here else os.O_DIRECTORY)
            try:
                nfd = os.open(name, flags, dir_fd=fd)
            except FileNotFoundError:
                if file_here:
                    nfd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                                  0o644, dir_fd=fd)
                else:
                    os.mkdir(name, 0o755, dir_fd=fd)
                    nfd = os.open(name, flags, dir_fd=fd)
            except OSError:   # a link or not a directory: the runtime resolves it inside the root
                return
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)
