"""Health checks against a container's own address (http path -> 2xx, tcp connect, exec).

Semantics: checks run until one passes. A failure counts once per ``interval`` after
``start_period``; ``retries`` counted failures make the check fail. Before a failure is
counted the check is retried quickly (2 ms, then a tenth of the time since the start within
``START_POLL``'s bounds for http/tcp, doubling up to the interval for exec),
so a container that is up 2 ms after its start (busybox httpd under tini) is seen as healthy
at once rather than after a full interval (a refused connection costs ~0.3 ms).
"""
from __future__ import annotations

import socket
import time
from typing import Callable, Optional, Sequence, Tuple

from runtime.spec import Health as HealthSpec


def render_http_request(path: str, host: str) -> bytes:
    return (f"GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: orch-agent\r\n"
            "Connection: close\r\n\r\n").encode()


def parse_status(head: bytes) -> int:
    parts = head.split(b"\r\n", 1)[0].split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return 0
    return int(parts[1])


def check_http(ip: str, port: int, path: str, timeout: float) -> Tuple[bool, str]:
    try:
        with socket.create_connection((ip, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(render_http_request(path, f"{ip}:{port}"))
            head = b""
            while b"\r\n" not in head and len(head) < 4096:
                b = s.recv(1024)
                if not b:
                    break
                head += b
    except OSError as exc:
        return False, f"GET {path}: {exc}"
    code = parse_status(head)
    return 200 <= code < 300, f"GET {path}: HTTP {code}"


def check_tcp(ip: str, port: int, timeout: float) -> Tuple[bool, str]:
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True, f"tcp {port}: connected"
    except OSError as exc:
        return False, f"tcp {port}: {exc}"


LOOPBACK = "127.0.0.1"


def probe(spec: HealthSpec, ip: str, run_exec: Callable[[Sequence[str], float], int]
          ) -> Tuple[bool, str]:
    """One check of the container at ``ip``; a container without an address of its own
    (``network: host``) shares the agent's network namespace and is probed on loopback."""
    ip = ip or LOOPBACK
    if spec.kind == "http":
        return check_http(ip, int(spec.port or 0), spec.path or "/", spec.timeout)
    if spec.kind == "tcp":
        return check_tcp(ip, int(spec.port or 0), spec.timeout)
    if spec.kind == "exec":
        rc = run_exec(list(spec.command), spec.timeout)
        return rc == 0, f"exec {' '.join(spec.command)}: exit {rc}"
    return True, "no health check"


# How often a starting container is probed until it first answers: an http or tcp probe that
# finds nothing listening costs a refused connection, and every poll skipped is time the whole
# rollout waits (a doubling backoff first probed at 5, 15, 35, 75, 155, 315, 635 ms: an app
# ready at 160 ms was seen at 315). A tenth of the time since the start, within these bounds:
# a small app up in ~50 ms is seen within 5 ms, one that takes seconds (a Pi) is probed every
# 20 ms, not busier. An exec probe starts a process: it keeps backing off.
START_POLL = {"http": (0.005, 0.02), "tcp": (0.005, 0.02)}


def run_until_healthy(spec: HealthSpec, ip: str, run_exec, alive: Callable[[], bool],
                      clock=time.monotonic, sleep=time.sleep) -> Tuple[bool, str]:
    """Probe until healthy, or until ``retries`` counted failures; stops early if the
    container dies."""
    if spec.kind == "none":
        return (True, "no health check") if alive() else (False, "container exited")
    start = clock()
    counted = 0
    next_count = start + spec.start_period + spec.interval
    delay = 0.002
    last = "not checked"
    while True:
        if not alive():
            return False, f"container exited ({last})"
        ok, last = probe(spec, ip, run_exec)
        if ok:
            return True, last
        now = clock()
        if now >= next_count:
            counted += 1
            next_count = now + spec.interval
            if counted >= max(1, spec.retries):
                return False, f"unhealthy after {counted} failed checks: {last}"
        sleep(max(0.0, min(delay, next_count - clock())))
        poll = START_POLL.get(spec.kind)
        if poll is None:
            delay = min(delay * 2, spec.interval)
        else:
            delay = min(spec.interval, max(poll[0], min(poll[1], (clock() - start) / 10)))


def watch(spec: HealthSpec, ip: str, run_exec, alive: Callable[[], bool], seconds: float,
          clock=time.monotonic, sleep=time.sleep) -> Tuple[bool, Optional[str]]:
    """During a monitor window: the container's death fails the window at once (checked
    every 20 ms); a probe runs every ``interval`` and ``retries`` consecutive failures fail it."""
    end = clock() + seconds
    fails = 0
    next_probe = clock()
    while clock() < end:
        if not alive():
            return False, "container exited during the monitor window"
        if spec.kind != "none" and clock() >= next_probe:
            ok, msg = probe(spec, ip, run_exec)
            fails = 0 if ok else fails + 1
            if fails >= max(1, spec.retries):
                return False, f"unhealthy during the monitor window: {msg}"
            next_probe = clock() + spec.interval
        sleep(max(0.0, min(0.02, end - clock())))
    return True, None
