"""serve's door (runtime/door.py), with real sockets and a real fork: a snapshot is what `cat
observe.json /proc/uptime` prints, a session is a forked child answering on the socket, and
the child never holds what only serve may (its pidfile lock)."""
from __future__ import annotations

import fcntl
import json
import os
import select
import socket
import stat
import time

import pytest

from orchestrator.transport import ssh
from runtime import door, protocol, snapshot
from runtime.session import encode_request, read_answer

AGENT = "/var/lib/orch/agent/0123456789ab.pyz"


def echo_session(conn) -> int:
    """The child's session: answers each request line with its verb (runtime/session.py)."""
    from runtime.session import run_session
    return run_session(lambda verb, req, stream: (0, {"verb": verb, "pid": os.getpid()}),
                       conn.makefile("rb"), conn.makefile("wb"))


@pytest.fixture
def made(tmp_path):
    logs = []
    doors = []

    def make(**kw):
        d = door.Door(str(tmp_path), kw.pop("agent", AGENT), kw.pop("session", echo_session), logs.append, **kw)
        doors.append(d)
        return d.start()
    yield make, tmp_path, logs
    for d in doors:
        for pid in list(d.children):
            try:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        d.close()


def knock(run_dir, line: bytes) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(door.path(str(run_dir)))
    s.sendall(line)
    return s


def main_loop_turn(d, timeout=5.0) -> None:
    """What serve's main loop does between its steps: wait for a wake-up, fork what waits."""
    ready, _, _ = select.select([d], [], [], timeout)
    assert ready, "no session was handed to the main loop"
    d.serve_sessions()


def read_all(s) -> bytes:
    out = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return out
        out += chunk


def test_the_door_is_root_only_and_replaces_a_socket_left_behind(made):
    make, run, _ = made
    first = make()
    first.close()                                   # a serve that died: its socket file stays
    make()
    st = os.stat(door.path(str(run)))
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600


def test_a_snapshot_is_what_cat_of_the_snapshot_and_uptime_prints(made):
    make, run, _ = made
    d = make()
    snapshot.write(str(run), {"info": {"agent_digest": "sha256:ab"}, "have": {}, "status": {}})
    s = knock(run, door.request("snapshot"))
    out = read_all(s)
    assert snapshot.parse_read(out) == {"info": {"agent_digest": "sha256:ab"}, "have": {}, "status": {}}
    snapshot.forget(str(run))                       # an apply removed it: the reader asks the agent
    s = knock(run, door.request("snapshot"))
    out = read_all(s)
    assert snapshot.parse_read(out) is None and len(out.splitlines()) == 1


def test_a_session_is_a_forked_child_that_answers_until_eof(made):
    make, run, _ = made
    d = make()
    s = knock(run, door.request("session", agent=AGENT))
    main_loop_turn(d)
    r, w = s.makefile("rb"), s.makefile("wb")
    hello = json.loads(r.readline())
    assert hello["ok"] is True and hello["pid"] in d.children and hello["pid"] != os.getpid()
    for verb in ("observe", "lock", "apply"):
        w.write(encode_request(verb, {}))
        w.flush()
        assert read_answer(r) == (0, {"verb": verb, "pid": hello["pid"]})
    w.close()
    s.shutdown(socket.SHUT_WR)                      # EOF: the child's session ends, it exits
    assert r.read() == b""
    deadline = time.monotonic() + 10
    while d.children and time.monotonic() < deadline:
        d.reap()
        time.sleep(0.02)
    assert not d.children


def test_a_session_for_another_agent_file_is_refused(made):
    make, run, _ = made
    d = make()
    s = knock(run, door.request("session", agent="/var/lib/orch/agent/ffffffffffff.pyz"))
    answer = json.loads(read_all(s))
    assert answer["ok"] is False and "ffffffffffff" in answer["why"] and not d.children


def test_a_serve_run_from_a_source_tree_opens_no_sessions(made):
    make, run, _ = made
    d = make(agent=None)
    s = knock(run, door.request("session", agent=AGENT))
    assert json.loads(read_all(s))["ok"] is False and not d.children


def test_garbage_or_a_silent_caller_is_dropped_and_the_door_keeps_answering(made, monkeypatch):
    make, run, logs = made
    monkeypatch.setattr(door, "READ_TIMEOUT", 0.2)
    d = make()
    bad = knock(run, b"not json\n")
    silent = knock(run, b"")
    assert read_all(bad) == b"" and read_all(silent) == b""
    assert len(logs) == 2
    snapshot.write(str(run), {"info": {}, "have": {}, "status": {}})
    s = knock(run, door.request("snapshot"))
    assert snapshot.parse_read(read_all(s)) is not None


def test_a_sessions_child_does_not_hold_serves_pidfile_lock(made, tmp_path):
    """A successor serve (an upgrade) takes the pidfile lock at once, sessions or not."""
    make, run, _ = made
    pidfile = tmp_path / "serve.pid"
    serve_fd = os.open(pidfile, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(serve_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    d = make()
    s = knock(run, door.request("session", agent=AGENT))
    main_loop_turn(d)
    assert json.loads(s.makefile("rb").readline())["ok"] is True     # the child runs, the socket open
    os.close(serve_fd)                                                # serve stops
    successor = os.open(pidfile, os.O_RDWR)
    try:
        fcntl.flock(successor, fcntl.LOCK_EX | fcntl.LOCK_NB)         # BlockingIOError if the child held it
    finally:
        os.close(successor)
        s.close()


def test_the_control_machine_forwards_the_agents_door_only_where_connections_persist(monkeypatch):
    target = ssh.SSHTarget(name="h", address="10.0.0.1")
    monkeypatch.setenv(ssh.PERSIST_ENV, "60")
    opts = ssh.control_options(target)
    local, remote = opts[opts.index("-L") + 1].split(":", 1)
    assert remote == door.path(protocol.DEFAULT_RUN)
    assert local == ssh.door_path(target) and local.endswith(ssh.DOOR_SUFFIX)
    assert "StreamLocalBindUnlink=yes" in opts
    monkeypatch.setenv(ssh.PERSIST_ENV, "0")
    assert ssh.door_path(target) is None
    assert ssh.SSHConnection(target).knock(door.request("snapshot")) is None


def test_a_door_session_closes_twice_and_after_a_deadline_killed_it(made):
    """AgentSession closes its process when a call fails, and the pool closes it again."""
    make, run, _ = made
    d = make()
    s = knock(run, door.request("session", agent=AGENT))
    main_loop_turn(d)
    assert json.loads(s.makefile("rb").readline())["ok"] is True
    p = ssh.RemoteProcess("h", sock=s)
    p.kill()                                          # a deadline passed
    assert p.stdout.readline() == b""                 # a blocked read sees EOF
    p.close(timeout=5)
    assert p.close(timeout=5) is None
    p.let_go()


def test_a_session_the_main_loop_does_not_take_in_time_is_refused_as_busy(made, monkeypatch):
    """serve in a long step (a restart waiting for its health check): the caller hears at once
    that it should open its session the other way; snapshots are answered all the while."""
    make, run, _ = made
    monkeypatch.setattr(door, "HANDOFF", 0.2)
    d = make()
    s = knock(run, door.request("session", agent=AGENT))
    started = time.monotonic()
    answer = json.loads(read_all(s))
    assert answer["ok"] is False and "busy" in answer["why"]
    assert time.monotonic() - started < 2
    snapshot.write(str(run), {"info": {}, "have": {}, "status": {}})
    assert snapshot.parse_read(read_all(knock(run, door.request("snapshot")))) is not None
    d.serve_sessions()                      # the loop comes back: nothing left to fork
    assert not d.children


def test_a_session_child_holds_no_other_callers_socket(made):
    """A snapshot caller still connected when serve forked gets its EOF when the door thread
    closes it, not when the session's child ends."""
    make, run, _ = made
    d = make()
    held = knock(run, b"")                  # the thread is reading this one (it says nothing yet)
    s = knock(run, door.request("session", agent=AGENT))
    time.sleep(0.1)
    held.sendall(door.request("snapshot"))  # now the thread answers and closes it
    main_loop_turn(d)
    assert json.loads(s.makefile("rb").readline())["ok"] is True        # the child lives on
    held.settimeout(5)
    assert read_all(held).count(b"\n") >= 1                              # EOF came
    s.close()


def test_where_the_host_refuses_the_forward_the_caller_falls_back(tmp_path, monkeypatch):
    """sshd with AllowStreamLocalForwarding no, or no serve behind the socket: the master
    accepts the local connection and closes it at once. Reads and sessions then say None (the
    caller reads with `cat` and opens `python3 AGENT session`), at once."""
    import threading

    local = tmp_path / "master.door"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(local))
    listener.listen(8)

    def master():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.close()
    threading.Thread(target=master, daemon=True).start()
    monkeypatch.setattr(ssh, "door_path", lambda target: str(local))
    conn = ssh.SSHConnection(ssh.SSHTarget(name="h", address="10.0.0.1"))
    started = time.monotonic()
    assert conn.read_door(door.request("snapshot")) is None
    assert conn.open_door_session(door.request("session", agent=AGENT)) is None
    assert time.monotonic() - started < 1.0
    listener.close()
    assert conn.read_door(door.request("snapshot")) is None          # no master at all


def test_serve_with_a_door_holds_the_code_of_a_change_before_any_session_forks(tmp_path):
    """Every session is a fork of serve: what a change imports is loaded once, in serve."""
    import subprocess
    import sys

    from tests.conftest import REPO
    code = ("import sys\nfrom runtime import supervisor\nfrom runtime.cli import CHANGE_MODULES\n"
            "from runtime.layout import Layout\n"
            f"layout = Layout({str(tmp_path / 'root')!r}, {str(tmp_path / 'run')!r})\n"
            "layout.ensure()\nbefore = [m for m in CHANGE_MODULES if m in sys.modules]\n"
            "d = supervisor._open_door(layout)\n"
            "print(d is not None, 'runtime.executors' in before, all(m in sys.modules for m in CHANGE_MODULES))\n"
            "d.close()\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["True", "False", "True"]
