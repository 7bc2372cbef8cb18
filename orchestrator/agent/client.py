"""Calling the host agent over SSH: install it (by digest), run its verbs, stream blobs to it.

A thin edge module: argument lists in, parsed JSON out, agent errors as `AgentError`.
"""
from __future__ import annotations

import json
import posixpath
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from orchestrator.errors import AgentError
from orchestrator.transport.ssh import SSHConnection, close_quietly
from runtime import protocol

REMOTE_ROOT = protocol.DEFAULT_ROOT
AGENT_DIR = posixpath.join(REMOTE_ROOT, "agent")
MIN_PYTHON = (3, 9)

# One round trip that tells whether python3 is there, how new it is, and whether the agent is.
_PROBE = (
    "import os, sys, json; "
    "print(json.dumps({'python': list(sys.version_info[:2]), 'agent': os.path.isfile(sys.argv[1])}))"
)


def agent_path(digest: str) -> str:
    return posixpath.join(AGENT_DIR, protocol.split_digest(digest) + ".pyz")


def install_agent(conn: SSHConnection, local_pyz: str, digest: str) -> str:
    """Make sure the agent with this digest is on the host (the file name is its digest); its path."""
    path = agent_path(digest)
    res = conn.run(["python3", "-c", _PROBE, path], timeout=30)
    host = conn.target.name
    if res.exit_code == 127 or b"not found" in res.stderr and not res.stdout:
        raise AgentError("python3 is not installed on the host", host=host,
                         hint="install it there: apt-get install python3-minimal")
    try:
        probe = json.loads(res.stdout)
    except ValueError:
        raise AgentError(f"cannot probe python3: {res.stderr.decode(errors='replace').strip()[:300]}",
                         host=host) from None
    if tuple(probe["python"]) < MIN_PYTHON:
        raise AgentError(f"python3 {'.'.join(map(str, probe['python']))} is too old (the agent needs 3.9+)",
                         host=host)
    if probe["agent"]:
        return path
    mk = conn.run(["mkdir", "-p", AGENT_DIR])
    if mk.exit_code != 0:
        raise AgentError(f"cannot create {AGENT_DIR}: {mk.stderr.decode(errors='replace').strip()}", host=host)
    conn.put_file(local_pyz, path, 0o644)
    return path


class AgentClient:
    """The agent on one host, reached through one pooled SSH connection; with a `session`
    (orchestrator/agent/session.py), every verb goes to one agent process instead of a new
    `python3 AGENT VERB` each."""

    def __init__(self, conn: SSHConnection, path: str, session=None):
        self.conn = conn
        self.path = path
        self.session = session

    @property
    def host(self) -> str:
        return self.conn.target.name

    def argv(self, verb: str, *args: str) -> List[str]:
        return ["python3", self.path, verb, *args]

    def call(self, verb: str, request: Optional[Mapping[str, Any]] = None, *args: str,
             timeout: Optional[float] = 300) -> Dict[str, Any]:
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
        if code == protocol.EXIT_OK and "error" not in body:
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
             force: bool = False, timeout: float = 60) -> Dict[str, Any]:
        return self.call("lock", {"holder": holder, "ttl": ttl, "token": token or holder,
                                  "force": force}, timeout=timeout)

    def unlock(self, holder: str, force: bool = False, timeout: float = 60) -> Dict[str, Any]:
        """``holder``: the token the lock was taken with (the holder's name for old locks)."""
        return self.call("unlock", {"token": holder, "force": force}, timeout=timeout)

    def audit(self) -> Dict[str, Any]:
        return self.call("audit")

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
                                           timeout=None)
            return self._answer("receive", code, body, "")
        res = self.conn.stream_to(self.argv("receive"), frames, on_bytes)
        ok, body = protocol.parse_answer(res.exit_code, res.stdout)
        if not ok:
            err = body.get("error") or {}
            raise AgentError(f"receive: {err.get('message', 'failed')}", host=self.host, code=err.get("code"))
        return body
