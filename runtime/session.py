"""One agent process answering a sequence of framed requests over one channel (``session``).

Each request is one JSON line ``{"verb", "request", "bytes"}`` followed by ``bytes`` raw bytes
(the stream of a verb that takes one, such as ``receive``); each answer is one JSON line
``{"exit", "body"}`` with the exit code and body the verb would give on its own. The session
ends at EOF. A whole ``orch apply`` then costs a host one SSH channel and one Python start
(observe, lock, receive, apply, status, unlock), the way Mitogen made Ansible faster.

Stdlib only; the orchestrator imports ``encode_request``/``read_answer`` from here too.
"""
from __future__ import annotations

import json
from typing import Any, BinaryIO, Callable, Dict, Optional, Tuple

from runtime import protocol

MAX_HEADER = 1 << 20
NOT_IN_SESSION = ("serve", "logs", "session")     # they own stdout or never return

# dispatch(verb, request, stream) -> (exit code, body)
Dispatch = Callable[[str, Dict[str, Any], BinaryIO], Tuple[int, Dict[str, Any]]]


def encode_request(verb: str, request: Optional[Dict[str, Any]] = None, nbytes: int = 0) -> bytes:
    return json.dumps({"verb": verb, "request": request or {}, "bytes": int(nbytes)},
                      sort_keys=True).encode() + b"\n"


def encode_answer(code: int, body: Dict[str, Any]) -> bytes:
    return json.dumps({"exit": code, "body": body}, sort_keys=True).encode() + b"\n"


def read_answer(stream: BinaryIO) -> Tuple[int, Dict[str, Any]]:
    """Orchestrator side: (exit code, body) of the next answer; EOFError when the agent is gone."""
    line = stream.readline(MAX_HEADER)
    if not line:
        raise EOFError("the agent session ended")
    try:
        a = json.loads(line)
        return int(a["exit"]), dict(a["body"])
    except (ValueError, KeyError, TypeError) as exc:
        raise EOFError(f"bad answer from the agent session: {line[:200]!r}") from exc


class Bounded:
    """The next ``left`` bytes of a stream, as a stream (EOF after them)."""

    def __init__(self, stream: BinaryIO, left: int):
        self._s = stream
        self.left = left

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self._s.read(n)
        self.left -= len(data)
        if not data:
            self.left = 0
        return data

    def readline(self, limit: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        n = self.left if limit is None or limit < 0 else min(limit, self.left)
        data = self._s.readline(n)
        self.left -= len(data)
        if not data:
            self.left = 0
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def run_session(dispatch: Dispatch, stdin: BinaryIO, stdout: BinaryIO) -> int:
    """Answer requests until EOF; a malformed header ends the session (the stream is lost)."""
    while True:
        line = stdin.readline(MAX_HEADER)
        if not line:
            return protocol.EXIT_OK
        if not line.strip():
            continue
        try:
            head = json.loads(line)
            verb, request, nbytes = str(head["verb"]), head.get("request") or {}, int(head.get("bytes", 0))
            if not isinstance(request, dict) or nbytes < 0:
                raise ValueError("request must be an object and bytes >= 0")
        except (ValueError, KeyError, TypeError) as exc:
            stdout.write(encode_answer(protocol.EXIT_USAGE, protocol.error_body(
                protocol.E_BAD_REQUEST, f"bad session header: {exc}")))
            stdout.flush()
            return protocol.EXIT_USAGE
        body_stream = Bounded(stdin, nbytes)
        if verb in NOT_IN_SESSION:
            code, body = protocol.EXIT_USAGE, protocol.error_body(
                protocol.E_USAGE, f"{verb} cannot run inside a session")
        else:
            try:
                code, body = dispatch(verb, request, body_stream)
            except Exception as exc:   # noqa: BLE001 - one failed request must not end the session
                code, body = protocol.EXIT_ERROR, protocol.error_body(
                    protocol.E_INTERNAL, f"{type(exc).__name__}: {exc}")
        body_stream.drain()            # whatever the verb left unread: stay in step
        stdout.write(encode_answer(code, body))
        stdout.flush()
