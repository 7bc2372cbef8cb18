"""Checks on a deploy spec as the agent receives it (the orchestrator normalised it already;
the agent still refuses anything that would name a path outside its root or make no sense)."""
from __future__ import annotations

import re
from typing import Any, Mapping

from runtime.errors import BadRequest

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
HEALTH_KINDS = ("http", "tcp", "exec", "none")


def _fail(where: str, msg: str) -> None:
    raise BadRequest(f"{where}: {msg}")


def _abs_path(where: str, p: Any) -> None:
    if not isinstance(p, str) or not p.startswith("/") or ".." in p.split("/"):
        _fail(where, f"expected an absolute path without '..', got {p!r}")


def check_deploy(service: str, d: Mapping[str, Any]) -> None:
    base = f"services/{service}/deploy"
    if not isinstance(d, Mapping):
        _fail(base, "expected an object")
    for i, p in enumerate(d.get("ports") or []):
        for k in ("host", "container"):
            v = p.get(k) if isinstance(p, Mapping) else None
            if not isinstance(v, int) or not 1 <= v <= 65535:
                _fail(f"{base}/ports/{i}/{k}", f"expected a port 1-65535, got {v!r}")
        if p.get("protocol", "tcp") not in ("tcp", "udp"):
            _fail(f"{base}/ports/{i}/protocol", f"expected tcp or udp, got {p.get('protocol')!r}")
    for key in ("volumes", "secrets"):
        for i, v in enumerate(d.get(key) or []):
            if not isinstance(v, Mapping) or not NAME_RE.match(str(v.get("name", ""))):
                _fail(f"{base}/{key}/{i}/name", "expected a plain name (letters, digits, "
                      f"'_', '.', '-'), got {v.get('name') if isinstance(v, Mapping) else v!r}")
            _abs_path(f"{base}/{key}/{i}/dest", v.get("dest"))
    h = d.get("health") or {}
    if h.get("kind", "none") not in HEALTH_KINDS:
        _fail(f"{base}/health/kind", f"expected one of {', '.join(HEALTH_KINDS)}")
    if h.get("kind") in ("http", "tcp") and not 1 <= int(h.get("port") or 0) <= 65535:
        _fail(f"{base}/health/port", f"expected a port 1-65535, got {h.get('port')!r}")
    if h.get("kind") == "exec" and not h.get("command"):
        _fail(f"{base}/health/command", "an exec check needs a command")
    for k in ("drain", "monitor", "stop_timeout"):
        v = d.get(k, 0) or 0
        if not isinstance(v, (int, float)) or v < 0 or v > 3600:
            _fail(f"{base}/{k}", f"expected seconds between 0 and 3600, got {v!r}")
    env = d.get("env") or {}
    if not isinstance(env, Mapping) or any("=" in str(k) or not str(k) for k in env):
        _fail(f"{base}/env", "expected an object of NAME: value without '=' in names")
