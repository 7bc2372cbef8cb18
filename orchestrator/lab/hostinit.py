"""Runs inside a lab host's fresh mount namespace: private dirs, then exec sshd.

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


def main(argv: list) -> int:
    sep = argv.index("--")
    state_dir = Path(argv[0])
    sshd_argv = argv[sep + 1:]
    for target, backing in PRIVATE_DIRS:
        subprocess.run(["mount", "--bind", str(state_dir / backing), target], check=True)
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    os.execv(sshd_argv[0], sshd_argv)
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
