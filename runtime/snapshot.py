"""What ``observe`` answers, kept current by ``serve`` in <run>/observe.json, so a no-op
``orch apply`` reads a file instead of starting Python on every host.

``serve`` writes it after its ticks, under the converge lock; every verb that changes what
runs removes it under that same lock before changing anything, so a reader finds either a
snapshot no older than the last change, or none (and then asks the agent). It carries the
host's uptime at writing: the reader sends ``cat SNAPSHOT /proc/uptime`` and tells its age
without trusting either side's wall clock.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional

NAME = "observe.json"
MAX_AGE = 3.0          # seconds: serve rewrites it about once a second


def path(run_dir: str) -> str:
    return os.path.join(run_dir, NAME)


def uptime() -> float:
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def render(observed: Dict[str, Any], at: float) -> bytes:
    return json.dumps({"uptime": at, "observe": observed}, sort_keys=True).encode() + b"\n"


def write(run_dir: str, observed: Dict[str, Any]) -> None:
    p = path(run_dir)
    tmp = p + ".tmp"
    with open(tmp, "wb") as f:
        f.write(render(observed, uptime()))
    os.replace(tmp, p)


def forget(run_dir: str) -> None:
    try:
        os.unlink(path(run_dir))
    except FileNotFoundError:
        pass


def parse_read(out: bytes, max_age: float = MAX_AGE) -> Optional[Dict[str, Any]]:
    """Reader side: the output of ``cat SNAPSHOT /proc/uptime`` -> the observe body, or None
    when it is missing, torn or too old."""
    lines = out.decode(errors="replace").strip().splitlines()
    if len(lines) != 2:
        return None
    try:
        snap = json.loads(lines[0])
        now = float(lines[1].split()[0])
        age = now - float(snap["uptime"])
        body = snap["observe"]
    except (ValueError, KeyError, TypeError, IndexError):
        return None
    if not 0 <= age <= max_age or not isinstance(body, dict):
        return None
    return body
