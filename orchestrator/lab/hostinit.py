"""Runs inside a lab host's fresh mount namespace: private dirs, cgroups, then exec sshd.

Started by `orchestrator.lab.machine` as
``ip netns exec NS unshare --mount --propagation private -- python3 -m orchestrator.lab.hostinit
STATE_DIR -- SSHD ARGS...``; every exec keeps the pid, so the recorded pid is sshd's.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# private directory inside the host  ->  its backing directory name under the host's state dir
# A private /root too: the machine's own shell start-up files (pyenv, cargo...) stay out of the
# lab hosts, which then look like a freshly installed host.
PRIVATE_DIRS = (("/var/lib/orch", "var-lib-orch"), ("/etc/orch", "etc-orch"), ("/run", "run"),
                ("/root", "root-home"))


def cgroup_mounts(init_mountinfo: str, own_mountinfo: str) -> list:
    """The mount argv lists that give the host the machine's cgroup v1 controllers, but not
    the cgroup2 mount beside them. With it the host's mode is "hybrid", which crun refuses, and
    the agent falls back to runc; without it (on this machine it holds no controller a
    container uses) the host is a cgroup v1 host, where the agent runs crun as it does on the
    cgroup v2 Pis and servers orch is for. Booted hosts keep it (their systemd needs it) and
    run runc."""
    from runtime import cgroups
    init = [m for m in cgroups.parse_mountinfo(init_mountinfo) if m[1] != "cgroup2"]
    return cgroups.render_cgroup_mounts(init, cgroups.parse_mountinfo(own_mountinfo))


def main(argv: list) -> int:
    sep = argv.index("--")
    state_dir = Path(argv[0])
    sshd_argv = argv[sep + 1:]
    # first: a private /root can hide this Python's own library (a pyenv one)
    with open("/proc/1/mountinfo") as f, open("/proc/self/mountinfo") as g:
        for mount in cgroup_mounts(f.read(), g.read()):
            subprocess.run(mount, check=True)
    for target, backing in PRIVATE_DIRS:
        subprocess.run(["mount", "--bind", str(state_dir / backing), target], check=True)
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    os.execv(sshd_argv[0], sshd_argv)
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
