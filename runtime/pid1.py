"""The init process bound into containers as PID 1 (what ``docker --init`` does with tini).

A program that is PID 1 gets no default signal handlers: busybox httpd or a plain Python
server ignore SIGTERM there, and every stop waits for ``stop_timeout``. A tiny init as PID 1
forwards the stop signal to the service and reaps zombies, so a stop takes milliseconds.

The binary comes from the host's own packages (Debian ``tini`` or ``catatonit``), bound
read-only into the container. It must be static (the image may have no libc) and built for
the host's kernel, not the image: a host's package always is, and on a lab "arm" host, which
shares this machine's files, it runs natively while the service runs under qemu-user.
"""
from __future__ import annotations

import struct
from typing import Optional, Sequence

# static builds only: Debian's /usr/bin/tini is dynamic and needs the image to have a libc
CANDIDATES = ("/usr/bin/tini-static", "/usr/bin/catatonit", "/usr/libexec/podman/catatonit",
              "/usr/bin/tini")
DEST = "/dev/init"          # on the container's /dev tmpfs: nothing is added to the image's files
PT_INTERP = 3


def is_static_elf(path: str) -> bool:
    """True for an ELF executable without a program interpreter (no dynamic loader needed)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if len(head) < 52 or head[:4] != b"\x7fELF" or head[4] not in (1, 2):
                return False
            end = "<" if head[5] == 1 else ">"
            if head[4] == 2:
                phoff, = struct.unpack(end + "Q", head[32:40])
                phentsize, phnum = struct.unpack(end + "HH", head[54:58])
            else:
                phoff, = struct.unpack(end + "I", head[28:32])
                phentsize, phnum = struct.unpack(end + "HH", head[42:46])
            if not phnum or phnum > 256 or phentsize < 4:
                return False
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    if len(table) < phentsize * phnum:
        return False
    types = [struct.unpack(end + "I", table[i * phentsize:i * phentsize + 4])[0] for i in range(phnum)]
    return PT_INTERP not in types


def find_init(candidates: Sequence[str] = CANDIDATES) -> Optional[str]:
    """The first static init binary on this host, or None (containers then run without one)."""
    for path in candidates:
        if is_static_elf(path):
            return path
    return None


def wrap_args(args: Sequence[str]) -> list:
    """The container's process args with the init in front (tini and catatonit take ``--``)."""
    return [DEST, "--", *args]
