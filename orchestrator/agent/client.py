"""Calling the host agent over SSH: run its verbs, stream blobs to it, install it (by digest).

A thin edge module: argument lists in, parsed JSON out, agent errors as `AgentError`.

Every verb runs through ``LAUNCH``, a few lines of Python that run the agent file if it is there
and otherwise answer, as JSON with exit ``EXIT_NO_AGENT``, what a reader needs instead: the
python version, the host's machine and the agent files that are there. A missing agent is
thus told by its own exit code, in the same round trip, never by Python's error text.
Every session (an ``AgentClient``) checks the agent's protocol and state schema once, from the
first answer that carries them (``observe`` or ``info``).
"""
from __future__ import annotations

import json
import posixpath
import threading
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from orchestrator.errors import AgentError, TransportError, AgentVersionError
from orchestrator.transport.ssh import SSHConnection, close_quietly
from runtime import protocol

REMOTE_ROOT = protocol.DEFAULT_ROOT
AGENT_DIR = posixpath.join(REMOTE_ROOT, "agent")
MIN_PYTHON = (3, 9)

# python3 -I -S -c LAUNCH AGENT VERB ARGS...: run AGENT as `python3 AGENT VERB ARGS...` would, or
# say what is there instead (exit EXIT_NO_AGENT). Python 2 and 3 syntax alike, so an old python3
# is told by its version, not by a syntax error. Where the agent's sources were extracted beside
# it (orchestrator/agent/bundle.py) they are imported from there directly, bytecode and all: no
# runpy, no zipimport. -I: no PYTHON* variables, no user site, no current directory on the path
# (the agent is stdlib only); -S: no site-packages either (site alone costs 10-40 ms a start).
LAUNCH = """import os, sys
path = sys.argv[1]
try:
    cache = os.path.join(os.path.dirname(path), ".cache",
                         "%%s-%%d" %% (os.path.basename(path), os.stat(path).st_size))
    cached = os.path.isfile(os.path.join(cache, "runtime", "cli.py"))
except (OSError, ValueError):
    cached = False
if cached and not os.environ.get("ORCH_AGENT_NO_CACHE"):
    sys.argv = sys.argv[1:]
    sys.path.insert(0, cache)
    sys.dont_write_bytecode = False
    from runtime.cli import main
    sys.exit(main())
if not os.path.isfile(path):
    import json, platform
    d = os.path.dirname(path)
    try:
        agents = [[os.path.join(d, n), os.stat(os.path.join(d, n)).st_mtime]
                  for n in sorted(os.listdir(d)) if n.endswith(".pyz")]
    except OSError:
        agents = []
    serve = None
    try:
        with open(%(pidfile)r) as f:
            with open("/proc/%%d/cmdline" %% int(f.read().strip()), "rb") as c:
                serve = [a.decode() for a in c.read().split(bytes(1)) if a.endswith(b".pyz")][0]
    except Exception:
        pass
    try:
        with open("/etc/orch/platform") as f:
            declared = f.read().strip() or None
    except (IOError, OSError):
        declared = None
    print(json.dumps({"error": {"code": %(code)r, "message": "no agent at " + path,
                                "python": list(sys.version_info[:3]), "machine": platform.machine(),
                                "platform": declared, "agents": agents, "serve_agent": serve}}))
    sys.exit(%(exit)d)
sys.argv = sys.argv[1:]
import runpy
runpy.run_path(path, run_name="__main__")
""" % {"pidfile": posixpath.join(protocol.DEFAULT_RUN, protocol.PIDFILE), "code": protocol.E_NO_AGENT,
       "exit": protocol.EXIT_NO_AGENT}


def launch_argv(path: str, *args: str) -> List[str]:
    """argv of the agent at ``path`` run through the launcher (an SSH exec request's command)."""
    return ["python3", "-I", "-S", "-c", LAUNCH, path, *args]


def check_versions(host: str, info: Mapping[str, Any], *, allow_newer: bool = False) -> None:
    """Refuse an agent that speaks a newer protocol, or keeps a newer state schema, than this
    orch (an older orch would silently downgrade it); ``allow_newer`` is a deliberate choice."""
    theirs = (int(info.get("protocol") or 1), int(info.get("state_schema") or 1))
    ours = (protocol.PROTOCOL_VERSION, protocol.STATE_SCHEMA)
    if allow_newer or (theirs[0] <= ours[0] and theirs[1] <= ours[1]):
        return
    raise AgentVersionError(
        f"runs a newer agent (protocol {theirs[0]}, state schema {theirs[1]}) than this orch "
        f"(protocol {ours[0]}, state schema {ours[1]})", host=host,
        hint="upgrade orch on this machine; `orch apply --allow-downgrade` replaces it with this "
             "orch's agent on purpose")


def agent_path(digest: str) -> str:
    return posixpath.join(AGENT_DIR, protocol.split_digest(digest) + ".pyz")


class AgentMissing(AgentError):
    """No agent file at the path a session was opened on; ``facts`` is what the launcher saw:
    python, machine, declared platform, the agent files there (path, mtime), serve's agent."""

    def __init__(self, host: str, facts: Mapping[str, Any]):
        super().__init__("agent not installed", host=host, code=protocol.E_NO_AGENT,
                         hint="orch apply installs it")
        self.facts = dict(facts)


def put_agent(conn: SSHConnection, local_pyz: str, digest: str, python: Sequence[int]) -> str:
    """Copy the agent file (named by its digest) to the host; its path. Refuses a python3 the
    agent cannot run on."""
    host = conn.target.name
    if tuple(python[:2]) < MIN_PYTHON:
        raise AgentError(f"python3 {'.'.join(map(str, python[:3]))} is too old (the agent needs 3.9+)",
                         host=host, hint="install a newer python3 there")
    path = agent_path(digest)
    mk = conn.run(["mkdir", "-p", AGENT_DIR], timeout=30)
    if mk.exit_code != 0:
        raise AgentError(f"cannot create {AGENT_DIR}: {mk.stderr.decode(errors='replace').strip()}", host=host)
    conn.put_file(local_pyz, path, 0o644)
    return path


RECEIVE_MIN_RATE = 32 * 1024      # bytes/s: slower than this, a transfer counts as stalled


def receive_deadline(nbytes: int) -> float:
    """A receive's deadline: a minute plus its bytes at the slowest uplink orch still serves."""
    return 60.0 + nbytes / RECEIVE_MIN_RATE


class AgentClient:
    """The agent on one host, reached through one pooled SSH connection; with a `session`
    (orchestrator/agent/session.py), every verb goes to one agent process instead of a new
    `python3 AGENT VERB` each. The agent's versions are checked once per client (``checked``,
    from the first answer that carries them); a ``read_only`` client refuses verbs that change
    the host, so a read command cannot change one by mistake."""

    def __init__(self, conn: SSHConnection, path: str, session=None, *, read_only: bool = False,
                 allow_newer: bool = False, lazy_session: bool = False):
        self.conn = conn
        self.path = path
        self.session = session
        self.read_only = read_only
        self.allow_newer = allow_newer
        self.checked: Optional[Dict[str, Any]] = None     # the info the versions were checked on
        self._lazy = lazy_session and session is None      # open one at the first verb
        self._opening = threading.Lock()

    @property
    def host(self) -> str:
        return self.conn.target.name

    def argv(self, verb: str, *args: str) -> List[str]:
        return launch_argv(self.path, verb, *args)

    def check(self, info: Mapping[str, Any]) -> None:
        check_versions(self.host, info, allow_newer=self.allow_newer)
        self.checked = dict(info)

    def call(self, verb: str, request: Optional[Mapping[str, Any]] = None, *args: str,
             timeout: Optional[float] = 300) -> Dict[str, Any]:
        from runtime.cli import VERBS
        if self.read_only and not (verb in VERBS and VERBS[verb].reads_only):
            raise AgentError(f"{verb}: changes the host, and this is a read-only session", host=self.host)
        if self._lazy and not args:
            with self._opening:
                if self._lazy:
                    from orchestrator.agent.session import AgentSession
                    self.session, self._lazy = AgentSession.open(self.conn, self.path), False
        if self.checked is None and verb not in ("info", "observe"):
            self.check(self.call("info", {"runtime_version": False}))
        if self.session is not None and not self.session.closed and not args:
            return self._in_session(verb, request or {}, timeout)
        data = json.dumps(request).encode() if request is not None else None
        res = self.conn.run(self.argv(verb, *args), input=data, timeout=timeout)
        ok, body = protocol.parse_answer(res.exit_code, res.stdout)
        return self._answer(verb, res.exit_code, body, res.stderr.decode(errors="replace").strip()[-500:])

    def _in_session(self, verb: str, request: Dict[str, Any], timeout: Optional[float]) -> Dict[str, Any]:
        code, body = self.session.call(verb, request, timeout=timeout)
        return self._answer(verb, code, body, "")

    def _answer(self, verb: str, code: int, body: Dict[str, Any], stderr: str) -> Dict[str, Any]:
        if code == protocol.EXIT_NO_AGENT and (body.get("error") or {}).get("code") == protocol.E_NO_AGENT:
            raise AgentMissing(self.host, body["error"])
        if code == 127:
            raise AgentError("python3 is not installed on the host", host=self.host,
                             hint="install it there: apt-get install python3-minimal")
        if code == protocol.EXIT_OK and "error" not in body:
            if verb in ("info", "observe") and self.checked is None:
                self.check(body["info"] if verb == "observe" else body)
            return body
        if code == protocol.EXIT_PARTIAL and "services" in body:
            return body            # apply: per-service outcome, some failed
        err = body.get("error") or {}
        message = err.get("message") or stderr or f"exit {code}"
        raise AgentError(f"{verb}: {message}", host=self.host, code=err.get("code"))

    # ---- verbs ----------------------------------------------------------------------------
    def info(self) -> Dict[str, Any]:
        return self.call("info")

    def have(self, digests: Sequence[str]) -> Dict[str, Any]:
        return self.call("have", {"digests": list(digests)})

    def status(self, timeout: float = 60) -> Dict[str, Any]:
        return self.call("status", timeout=timeout)

    # Mutating verbs need the session's deploy-lock token (orchestrator/fleet/lock.py takes it).
    def apply(self, services: Mapping[str, Mapping[str, Any]], who: str, *, lock: str,
              timeout: Optional[float] = 300) -> Dict[str, Any]:
        return self.call("apply", protocol.apply_request(services, who, lock=lock), timeout=timeout)

    def prepare(self, services: Mapping[str, Mapping[str, Any]], *, lock: str,
                timeout: Optional[float] = 300) -> Dict[str, Any]:
        """A later wave's containers made (not started) while an earlier wave runs; same
        ``services`` as ``apply`` (runtime/protocol.py)."""
        return self.call("prepare", {"services": dict(services), "lock": lock}, timeout=timeout)

    def rollback(self, service: str, to: Optional[str] = None, who: Optional[str] = None, *,
                 lock: str, timeout: Optional[float] = 300) -> Dict[str, Any]:
        if self.session is not None and not self.session.closed:
            return self._in_session("rollback", {"service": service, "to": to, "who": who, "lock": lock}, timeout)
        args = [service] + (["--to", to] if to else []) + (["--who", who] if who else [])
        return self.call("rollback", {"lock": lock}, *args, timeout=timeout)

    def remove(self, service: str, who: Optional[str] = None, *, lock: str,
               timeout: Optional[float] = 300) -> Dict[str, Any]:
        if self.session is not None and not self.session.closed:
            return self._in_session("remove", {"service": service, "who": who, "lock": lock}, timeout)
        return self.call("remove", {"lock": lock}, service, *(["--who", who] if who else []),
                         timeout=timeout)

    def lock(self, holder: str, ttl: float, token: Optional[str] = None,
             force: bool = False, timeout: float = 60,
             observe: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
        """``observe``: the answer also holds what ``observe`` would, read once the lock is held."""
        request = {"holder": holder, "ttl": ttl, "token": token or holder, "force": force}
        if observe is not None:
            request["observe"] = dict(observe)
        return self.call("lock", request, timeout=timeout)

    def unlock(self, holder: str, force: bool = False, timeout: float = 60,
               status: bool = False) -> Dict[str, Any]:
        """``holder``: the token the lock was taken with (the holder's name for old locks);
        ``status``: the answer also holds what ``status`` would, read as the lock goes."""
        request = {"token": holder, "force": force}
        if status:
            request["status"] = True
        return self.call("unlock", request, timeout=timeout)

    def audit(self) -> Dict[str, Any]:
        return self.call("audit")

    def volumes(self) -> Dict[str, Any]:
        return self.call("volumes")

    def logs(self, service: str, tail: int = 100) -> bytes:
        res = self.conn.run(self.argv("logs", service, "--tail", str(tail)), timeout=60)
        if res.exit_code != 0:
            ok, body = protocol.parse_answer(res.exit_code, res.stdout)
            raise AgentError(f"logs: {(body.get('error') or {}).get('message', 'failed')}", host=self.host)
        return res.stdout

    def follow_logs(self, service: str, sink) -> None:
        channel = self.conn.open_command(self.argv("logs", service, "--follow"))
        try:
            while True:
                chunk = channel.recv(65536)
                if not chunk:
                    break
                sink(chunk)
        finally:
            close_quietly(channel)

    def send_blobs(self, frames: Iterable[bytes], on_bytes=None, nbytes: Optional[int] = None) -> Dict[str, Any]:
        """Stream `receive` frames to the agent in one command (no per-blob round trips); inside
        the session when there is one and the stream's length (`nbytes`) is known."""
        if self.session is not None and not self.session.closed and nbytes is not None:
            code, body = self.session.call("receive", data=frames, nbytes=nbytes, on_bytes=on_bytes,
                                           timeout=receive_deadline(nbytes))
            return self._answer("receive", code, body, "")
        res = self.conn.stream_to(self.argv("receive"), frames, on_bytes)
        if res.exit_code < 0:       # our ssh client died from a signal: the link may be fine, resume
            raise TransportError(f"receive: the ssh client was killed by signal {-res.exit_code}",
                                 host=self.host)
        ok, body = protocol.parse_answer(res.exit_code, res.stdout)
        if not ok:
            err = body.get("error") or {}
            raise AgentError(f"receive: {err.get('message', 'failed')}", host=self.host, code=err.get("code"))
        return body
