"""Facts about this host and this agent: platform, the agent file's digest, the running ``serve``."""
from __future__ import annotations

import hashlib
import os
import platform as _platform
import sys
from typing import Optional

from runtime import platforms
from runtime.layout import Layout



def host_platform(etc: str = "/etc/orch/platform") -> str:
    try:
        with open(etc) as f:
            p = f.read().strip()
        if p:
            return p
    except OSError:
        pass
    return platforms.from_machine(_platform.machine())


def agent_digest() -> str:
    path = sys.argv[0]
    if path.endswith(".pyz") and os.path.isfile(path):   # the zipapp (not zipfile: a start's import)
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return "sha256:" + h.hexdigest()
    return "dev"


def serve_pid(layout: Layout) -> Optional[int]:
    try:
        with open(layout.pidfile) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().split(b"\0")
    except OSError:
        return None
    return pid if b"serve" in cmd else None


def serve_agent(pid: Optional[int]) -> Optional[str]:
    """The agent file the running ``serve`` was started from (to tell an upgrade is due)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return None
    return next((a for a in args if a.endswith(".pyz")), None)
