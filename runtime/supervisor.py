"""``serve``: the long-running loop that keeps the persisted target true.

One step at a time under the converge lock (so ``apply`` and ``serve`` never interleave
steps), then the lock is released; crashed containers are restarted with backoff by the
planner; unexpected errors back off too. After ``kill -9`` a new ``serve`` simply observes
what is there (runtime state, container dirs, nft map, status.json) and carries on.
"""
from __future__ import annotations

import fcntl
import os
import select
import signal
import subprocess
import sys
import time
from typing import Optional

from runtime.reconcile import tick
from runtime.errors import AgentFailure
from runtime.layout import Layout


def _log(msg: str) -> None:
    sys.stderr.write(time.strftime("%Y-%m-%dT%H:%M:%S ") + msg + "\n")
    sys.stderr.flush()


LOCK_WAIT = 30.0


def run_serve(layout: Layout) -> int:
    from runtime import nftlib
    from runtime.agent import make_host
    nftlib.binary_in_this_process()
    h = make_host(layout, log=_log)
    fd = os.open(layout.pidfile, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + LOCK_WAIT
    while True:  # a serve that was just told to stop may still finish its step: wait for it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                _log("serve: another serve is running")
                os.close(fd)
                return 3
            time.sleep(0.1)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    stop = {"now": False, "fd": fd}

    def on_term(signum, frame):
        # Give the pidfile up at once, so a successor (an upgraded agent) can start while this
        # one finishes its current step; steps never interleave (converge lock).
        stop["now"] = True
        if stop["fd"] is not None:
            os.close(stop["fd"])
            stop["fd"] = None

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    door = _open_door(layout)
    _log(f"serve: pid {os.getpid()}, runtime {h.rt.name}, root {layout.root}"
         + (f", door {door.sock.getsockname()}" if door else ""))
    errors = 0
    probes: dict = {}
    failures: dict = {}                  # per service: (count, retry at), see reconcile.tick
    refreshed = time.monotonic()
    snapped = 0.0
    while not stop["now"]:
        if time.monotonic() - refreshed > 5.0:
            h.forget_cache()  # re-read the nft table now and then (someone may have flushed it)
            refreshed = time.monotonic()
        try:
            delay = tick(h, probes, failures)
            errors = 0
        except Exception as exc:  # keep running: back off and retry
            errors += 1
            delay = min(30.0, 0.5 * 2 ** min(errors, 6))
            _log(f"serve: {type(exc).__name__}: {exc} (retry in {delay:.1f}s)")
        if time.monotonic() - snapped >= SNAPSHOT_EVERY:
            run_write_snapshot(h)
            snapped = time.monotonic()
        end = time.monotonic() + delay
        while not stop["now"] and time.monotonic() < end:
            wait = min(0.05, max(0.0, end - time.monotonic()))
            if door is None:
                time.sleep(wait)
                continue
            try:        # a session at the door is forked at once, never during a step
                ready, _, _ = select.select([door], [], [], wait)
            except InterruptedError:
                ready = []
            if ready:
                door.serve_sessions()
            else:
                door.reap()
    if door is not None:
        door.close()
    _log("serve: stopping (containers keep running)")
    return 0


def _open_door(layout: Layout):
    """runtime/door.py, or None (the host is read and sessions open the old way) where the
    socket cannot be made."""
    from runtime import door
    from runtime.cli import answer_session
    from runtime.hostinfo import serve_agent

    agent = serve_agent(os.getpid())

    def session(conn) -> int:
        rfile, wfile = conn.makefile("rb"), conn.makefile("wb")
        return answer_session(layout, rfile, wfile, door.raw_log, agent or sys.argv[0])
    try:
        opened = door.Door(layout.run, agent, session, _log).start()
    except OSError as exc:
        _log(f"serve: no door ({exc}): hosts are read the slower way")
        return None
    preload_change_modules()
    return opened


def preload_change_modules() -> None:
    """serve is the template of every session it forks: holding the code that changes a host
    (~12 ms of imports, ~2 MB) spares each change that import on every host, the CPU a
    rollout's hosts need for their containers."""
    import importlib
    from runtime.cli import CHANGE_MODULES
    for name in CHANGE_MODULES:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a session imports it again and reports it
            _log(f"serve: cannot load {name}: {exc}")
    import gc
    gc.collect()    # no garbage of a failed import is kept for good
    gc.freeze()     # the code loaded so far lives as long as serve: its collector skips it


SNAPSHOT_EVERY = 1.0


def run_write_snapshot(h) -> None:
    """Write what ``observe`` would answer (every blob the store has) to <run>/observe.json,
    under the converge lock so no change is half-way; on any error, leave none behind."""
    from runtime import agent, snapshot
    layout = h.layout
    try:
        with h.state.flock("converge.lock", blocking=False) as got:
            if not got:
                return               # an apply is changing things: it removed the snapshot
            from runtime import store
            snapshot.write(layout.run, agent.verb_observe(layout, {"digests": store.held_digests(layout)}))
    except Exception as exc:  # noqa: BLE001 - a reader then asks the agent itself
        snapshot.forget(layout.run)
        _log(f"serve: observe snapshot: {type(exc).__name__}: {exc}")


def start_daemon(layout: Layout, argv0: str, extra: Optional[list] = None) -> dict:
    """Start ``serve`` detached (new session, output to <root>/logs/agent.log) and return its
    pid once the pidfile names it. An already running serve is reported, not duplicated."""
    from runtime.hostinfo import serve_agent, serve_pid
    layout.ensure()
    pid = serve_pid(layout)
    # one that runs this agent file stays; one that runs another (being upgraded) is succeeded
    if pid and (serve_agent(pid) == argv0 or not argv0.endswith(".pyz")):
        return {"pid": pid, "pidfile": layout.pidfile, "started": False}
    logf = open(os.path.join(layout.logs, "agent.log"), "ab")
    argv = [sys.executable, argv0, "--root", layout.root, "--run", layout.run, "serve"]
    p = subprocess.Popen(argv + list(extra or []), stdin=subprocess.DEVNULL, stdout=logf,
                         stderr=logf, start_new_session=True, close_fds=True)
    logf.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if serve_pid(layout) == p.pid:
            return {"pid": p.pid, "pidfile": layout.pidfile, "started": True}
        if p.poll() is not None:
            raise AgentFailure(f"serve exited with {p.returncode}; see "
                               f"{os.path.join(layout.logs, 'agent.log')}")
        time.sleep(0.02)
    raise AgentFailure("serve did not write its pidfile within 10 s")
