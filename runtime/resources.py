"""Free disk and memory of this host (read cheaply: `observe` asks on every plan)."""
from __future__ import annotations

import os


def free_disk(path: str) -> int:
    """Free bytes on the filesystem that holds ``path`` (or would hold it: its nearest existing
    parent, so a read on a fresh host creates nothing)."""
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def free_memory() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0
