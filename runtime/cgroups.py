"""Make the cgroup hierarchies visible where they are not mounted.

A host whose /sys was remounted for its network namespace (``ip netns exec`` does that, so
lab hosts are such hosts) has no cgroup mounts, and runc then refuses to create anything.
The hierarchies are the kernel's own, so mounting them again (same controllers as PID 1's
mounts) attaches to the very same trees; nothing new is created.
"""
from __future__ import annotations

import subprocess
from typing import List, Tuple

from runtime.errors import RuntimeFailure


def parse_mountinfo(text: str) -> List[Tuple[str, str, str]]:
    """(mount point, fstype, super options) for each line."""
    out = []
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        rest = right.split()
        if len(fields) < 5 or len(rest) < 3:
            continue
        out.append((fields[4].replace("\\040", " "), rest[0], rest[2]))
    return out


def render_cgroup_mounts(init_mounts, own_mounts) -> List[List[str]]:
    """The ``mount`` argv lists that recreate PID 1's cgroup mounts missing here."""
    have = {mp for mp, fs, _ in own_mounts if fs in ("cgroup", "cgroup2")}
    if have:
        return []
    cmds: List[List[str]] = []
    for mp, fs, opts in init_mounts:
        if not mp.startswith("/sys/fs/cgroup"):
            continue
        if fs == "tmpfs" and mp == "/sys/fs/cgroup":
            cmds.append(["mount", "-t", "tmpfs", "-o", "mode=755,nosuid,nodev,noexec", "tmpfs", mp])
        elif fs in ("cgroup", "cgroup2"):
            o = ",".join(x for x in opts.split(",") if x not in ("rw", "ro")) or "defaults"
            cmds.append(["mkdir", "-p", mp])
            cmds.append(["mount", "-t", fs, "-o", o, fs, mp])
    return cmds


def run_ensure_cgroups() -> None:
    with open("/proc/self/mountinfo") as f:
        own = parse_mountinfo(f.read())
    if any(fs in ("cgroup", "cgroup2") for _, fs, _ in own):
        return
    try:
        with open("/proc/1/mountinfo") as f:
            init = parse_mountinfo(f.read())
    except OSError:
        return
    for argv in render_cgroup_mounts(init, own):
        p = subprocess.run(argv, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeFailure(f"{' '.join(argv)}: {p.stderr.strip()}")
