"""One agent process per host per command: `python3 AGENT session` over one SSH channel.

Requests go one after another on the same pipes (runtime/session.py frames them); bulk data for
`receive` travels inside the request that needs it. Each call has a deadline: past it the
process is killed, and the call fails like a lost connection.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

from orchestrator.errors import TransportError
from orchestrator.transport.ssh import RemoteProcess, SSHConnection
from runtime import door
from runtime.session import encode_request, read_answer


class SessionGone(TransportError):
    """The session process ended (agent missing, link lost, deadline passed)."""


class AgentSession:
    def __init__(self, process: RemoteProcess):
        self.process = process
        self.host = process.host
        self._lock = threading.Lock()
        self.closed = False
        self.exit_code: Optional[int] = None

    @classmethod
    def open(cls, conn: SSHConnection, agent_path: str) -> "AgentSession":
        """Through the door of the host's `serve` where it runs this agent (a fork there, no
        process here: runtime/door.py), else `python3 AGENT session` over an SSH channel."""
        process = conn.open_door_session(door.request("session", agent=agent_path))
        if process is not None:
            return cls(process)
        from orchestrator.agent.client import launch_argv   # a missing agent exits EXIT_NO_AGENT
        return cls(conn.open_process(launch_argv(agent_path, "session")))

    def call(self, verb: str, request: Optional[Dict[str, Any]] = None, *, data: Iterable[bytes] = (),
             nbytes: int = 0, on_bytes: Optional[Callable[[int], None]] = None,
             timeout: Optional[float] = 300) -> Tuple[int, Dict[str, Any]]:
        """(exit code, body) of one verb; `data` (exactly `nbytes` bytes) is its input stream."""
        with self._lock:
            if self.closed:
                raise SessionGone(f"{verb}: the agent session is closed", host=self.host)
            timer = threading.Timer(timeout, self.process.kill) if timeout else None
            if timer:
                timer.daemon = True
                timer.start()
            try:
                self.process.stdin.write(encode_request(verb, request, nbytes))
                sent = 0
                for chunk in data:
                    self.process.stdin.write(chunk)
                    sent += len(chunk)
                    if on_bytes:
                        on_bytes(len(chunk))
                if sent != nbytes:
                    raise ValueError(f"{verb}: {sent} bytes sent, {nbytes} announced")
                self.process.stdin.flush()
                return read_answer(self.process.stdout)
            except (OSError, EOFError, ValueError) as exc:
                self._gone()
                expired = timer is not None and timer.finished.is_set()
                why = f"timed out after {timeout}s" if expired else (self.process.stderr_tail() or str(exc))
                raise SessionGone(f"{verb}: agent session ended: {why}", host=self.host) from None
            finally:
                if timer:
                    timer.cancel()

    def _gone(self) -> None:
        self.closed = True
        self.exit_code = self.process.close(timeout=2)

    def close(self) -> None:
        with self._lock:
            if not self.closed:
                self.closed = True
                self.exit_code = self.process.close()
