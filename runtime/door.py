"""The agent's door: a Unix socket ``serve`` listens on, so that reading a host or opening an
agent session starts no process there.

The control machine reaches it through the SSH connection it already holds: the OpenSSH
ControlMaster forwards a local socket to ``<run>/door.sock`` (``-L``, a direct-streamlocal
channel; sshd connects as the logged-in user, and the socket is root's alone, 0600 in a 0700
directory). On a connection ``serve`` reads one JSON line:

- ``{"want": "snapshot"}``: it answers what ``cat <run>/observe.json /proc/uptime`` would print
  (runtime/snapshot.py: a fresh snapshot or none) and closes;
- ``{"want": "session", "agent": PATH}``: when ``serve`` runs the agent file PATH, it answers
  ``{"ok": true, "pid": CHILD}`` from a forked child that answers framed requests on the socket, exactly as
  ``python3 PATH session`` would over an SSH channel (runtime/session.py), until EOF; the
  child already has the agent's code loaded, so a session costs a fork, not a Python start.
  Any other agent: ``{"ok": false, "why": ...}`` and the caller opens a session the old way.

``serve`` answers between its steps (it never forks while it holds a lock), at once when it
is idle. Everything here is stdlib; the orchestrator imports ``NAME`` and ``request``.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import stat
from typing import Callable, Dict, Optional

NAME = "door.sock"
MAX_LINE = 4096
MAX_SESSIONS = 32             # children alive at once; more are refused (the caller falls back)
READ_TIMEOUT = 2.0            # a connection that does not say what it wants within this is dropped


def path(run_dir: str) -> str:
    return os.path.join(run_dir, NAME)


def request(want: str, **fields) -> bytes:
    return json.dumps(dict(fields, want=want), sort_keys=True).encode() + b"\n"


def listen(run_dir: str) -> socket.socket:
    """Bind ``<run>/door.sock`` (replacing a socket left by an earlier ``serve``), 0600."""
    p = path(run_dir)
    try:
        if stat.S_ISSOCK(os.lstat(p).st_mode):
            os.unlink(p)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(p)
    finally:
        os.umask(old)
    os.chmod(p, 0o600)
    sock.listen(16)
    sock.setblocking(False)
    return sock


def snapshot_bytes(run_dir: str) -> bytes:
    """What ``cat <run>/observe.json /proc/uptime`` prints (the snapshot line is left out when
    there is none: the reader then sees one line and asks the agent itself)."""
    from runtime import snapshot
    out = b""
    try:
        with open(snapshot.path(run_dir), "rb") as f:
            out = f.read()
    except OSError:
        pass
    with open("/proc/uptime", "rb") as f:
        return out + f.read()


class Door:
    """``serve``'s side: accept what waits, answer snapshots, fork sessions, reap children."""

    def __init__(self, run_dir: str, agent: Optional[str], session: Callable[[socket.socket], int],
                 log: Callable[[str], None], keep_out: Callable[[], None] = lambda: None):
        self.run_dir = run_dir
        self.agent = agent                      # the agent file this serve runs (None: a dev tree)
        self.session = session                  # (connected socket) -> exit code, in the child
        self.log = log
        self.keep_out = keep_out                # in a child: close what only serve may hold
        self.sock = listen(run_dir)
        self.children: Dict[int, float] = {}

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def answer_waiting(self) -> None:
        self.reap()
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.log(f"serve: door: accept: {exc}")
                return
            try:
                self._one(conn)
            except (OSError, ValueError) as exc:
                self.log(f"serve: door: {type(exc).__name__}: {exc}")
            finally:
                conn.close()                    # a session's child has its own copy

    def _one(self, conn: socket.socket) -> bool:
        conn.setblocking(True)
        conn.settimeout(READ_TIMEOUT)
        line = b""
        while not line.endswith(b"\n"):
            chunk = conn.recv(MAX_LINE - len(line))
            if not chunk:
                return False
            line += chunk
            if len(line) >= MAX_LINE:
                raise ValueError("request line too long")
        req = json.loads(line)
        want = req.get("want") if isinstance(req, dict) else None
        if want == "snapshot":
            conn.sendall(snapshot_bytes(self.run_dir))
            return False
        if want != "session":
            conn.sendall(_refusal(f"unknown want {want!r}"))
            return False
        if self.agent is None or req.get("agent") != self.agent:
            conn.sendall(_refusal(f"serve runs {self.agent}, not {req.get('agent')}"))
            return False
        if len(self.children) >= MAX_SESSIONS:
            conn.sendall(_refusal(f"{len(self.children)} sessions already open"))
            return False
        pid = os.fork()
        if pid == 0:                            # the child: a session, then gone
            code = 70
            try:
                self.sock.close()
                self.keep_out()
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                conn.settimeout(None)
                conn.sendall(json.dumps({"ok": True, "pid": os.getpid()}).encode() + b"\n")
                code = self.session(conn)
            except BaseException as exc:  # noqa: BLE001 - a child must never return into serve
                try:
                    self.log(f"agent session (door): {type(exc).__name__}: {exc}")
                except BaseException:  # noqa: BLE001
                    pass
            finally:
                os._exit(code)
        self.children[pid] = 0.0
        return True

    def reap(self) -> None:
        for pid in list(self.children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                del self.children[pid]


def _refusal(why: str) -> bytes:
    return json.dumps({"ok": False, "why": why}, sort_keys=True).encode() + b"\n"
