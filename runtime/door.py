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

Snapshots are answered at once, by a thread; sessions are forked by ``serve``'s main loop
between its steps, never while it holds a lock (see ``Door``). Everything here is stdlib; the
orchestrator imports ``NAME`` and ``request``.
"""
from __future__ import annotations

import gc
import json
import os
import signal
import socket
import stat
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

NAME = "door.sock"
MAX_LINE = 4096
MAX_SESSIONS = 32             # children alive at once; more are refused (the caller falls back)
READ_TIMEOUT = 2.0            # a connection that does not say what it wants within this is dropped
HANDOFF = 1.0                 # seconds a session waits for serve's main loop to fork it


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
    """``serve``'s side. A thread accepts callers and answers snapshot reads itself (file reads:
    a step of ``serve`` that runs for seconds, such as a restart waiting for a health check,
    never holds them up). A session is handed to ``serve``'s main loop, which forks it between
    steps, holding no lock (``serve_sessions``); one the loop does not take within HANDOFF
    seconds is refused as busy, and the caller opens a session the old way."""

    def __init__(self, run_dir: str, agent: Optional[str], session: Callable[[socket.socket], int],
                 log: Callable[[str], None]):
        self.run_dir = run_dir
        self.agent = agent                      # the agent file this serve runs (None: a dev tree)
        self.session = session                  # (connected socket) -> exit code, in the child
        self.log = log
        self.sock = listen(run_dir)
        self._inode = os.lstat(path(run_dir)).st_ino
        self.sock.setblocking(True)
        self.sock.settimeout(1.0)               # the thread looks at `stopped` once a second
        self.wake_r, self.wake_w = os.pipe()    # the main loop selects on wake_r
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.children: Dict[int, float] = {}
        self._pending: List[Tuple[socket.socket, threading.Event]] = []
        self._lock = threading.Lock()
        self.stopped = False
        self._thread: Optional[threading.Thread] = None

    def fileno(self) -> int:
        return self.wake_r

    def start(self) -> "Door":
        self._thread = threading.Thread(target=self._accept_loop, name="door", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self.stopped = True
        try:            # wakes the thread's accept at once, unless a successor has the path now
            if os.lstat(path(self.run_dir)).st_ino == self._inode:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as poke:
                    poke.settimeout(1.0)
                    poke.connect(path(self.run_dir))
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(timeout=3)
        self.sock.close()
        for fd in (self.wake_r, self.wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    # -- the thread ------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError as exc:
                if self.stopped:
                    return
                self.log(f"serve: door: accept: {exc}")
                time.sleep(0.1)
                continue
            if self.stopped:
                conn.close()
                return
            handed = False
            try:
                handed = self._one(conn)
            except (OSError, ValueError) as exc:
                self.log(f"serve: door: {type(exc).__name__}: {exc}")
            finally:
                if not handed:
                    conn.close()

    def _one(self, conn: socket.socket) -> bool:
        """Answer one caller; True when its session went to the main loop (which closes it)."""
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
        taken = threading.Event()
        with self._lock:
            self._pending.append((conn, taken))
        try:
            os.write(self.wake_w, b"s")
        except BlockingIOError:
            pass                                # the pipe is full of wake-ups already
        if taken.wait(HANDOFF):
            return True
        with self._lock:
            if taken.is_set():                  # taken just now
                return True
            self._pending.remove((conn, taken))
        conn.sendall(_refusal("serve is busy with a step: open a session the other way"))
        return False

    # -- the main loop -----------------------------------------------------------------------
    def serve_sessions(self) -> None:
        """Fork a child for every session waiting (serve's main loop, between its steps)."""
        try:
            while os.read(self.wake_r, 512):
                pass
        except (BlockingIOError, OSError):
            pass
        self.reap()
        while True:
            with self._lock:
                if not self._pending:
                    return
                conn, taken = self._pending.pop(0)
                taken.set()
            try:
                if len(self.children) >= MAX_SESSIONS:
                    conn.sendall(_refusal(f"{len(self.children)} sessions already open"))
                else:
                    self._fork(conn)
            except OSError as exc:
                self.log(f"serve: door: session: {exc}")
            finally:
                conn.close()                    # the child has its own

    def _fork(self, conn: socket.socket) -> None:
        pid = os.fork()
        if pid:
            self.children[pid] = time.monotonic()
            return
        code = 70                               # the child: a session, then gone
        # what serve made is never scanned by this child's collector, nor its pages copied
        # for it: a session took ~15 % less CPU (77 -> 67 ms, median of 40, bench/phases.py)
        gc.freeze()
        try:
            fd = conn.fileno()
            # only its socket and stdio: a caller the door thread was answering when serve
            # forked must see its EOF, and serve's pidfile lock must stay serve's alone
            os.closerange(3, fd)
            os.closerange(fd + 1, _max_fd())
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            conn.settimeout(None)
            conn.sendall(json.dumps({"ok": True, "pid": os.getpid()}).encode() + b"\n")
            code = self.session(conn)
        except BaseException as exc:  # noqa: BLE001 - a child must never return into serve
            raw_log(f"agent session (door): {type(exc).__name__}: {exc}")
        finally:
            os._exit(code)

    def reap(self) -> None:
        for pid in list(self.children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                del self.children[pid]


def _max_fd() -> int:
    try:
        return min(os.sysconf("SC_OPEN_MAX"), 1 << 16)
    except (ValueError, OSError):
        return 1024


def raw_log(msg: str) -> None:
    """A log line for a session's child: straight to fd 2 (serve's log), bypassing sys.stderr,
    whose lock another thread of serve may have held when it forked."""
    try:
        os.write(2, (time.strftime("%Y-%m-%dT%H:%M:%S ") + msg + "\n").encode(errors="replace"))
    except OSError:
        pass



def _refusal(why: str) -> bytes:
    return json.dumps({"ok": False, "why": why}, sort_keys=True).encode() + b"\n"
