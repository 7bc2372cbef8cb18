"""Ship the blobs a host lacks over one raw SSH channel; resume after a dropped link."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence, Tuple

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from orchestrator.agent.client import AgentClient
from orchestrator.errors import TransportError
from orchestrator.transport.ssh import ConnectionPool
from runtime import protocol


@dataclass
class ShipResult:
    host: str
    blobs: int
    bytes_sent: int                          # on the wire, all attempts together
    attempts: int


def reconnecting_client(pool: ConnectionPool, host: str, agent_path: str,
                        first: Optional[AgentClient] = None) -> Callable[[], AgentClient]:
    """A `connect` for `ship_blobs`: `first` (the command's agent session) if given, then the
    pooled connection (the pool reconnects a dropped link)."""
    given = [first] if first is not None else []
    return lambda: given.pop() if given else AgentClient(pool.get(host), agent_path)


def stream_size(sizes: Mapping[str, int], partial: Mapping[str, int]) -> int:
    """Bytes of the `receive` stream protocol.iter_frames makes for these blobs."""
    total = 0
    for digest, size in sizes.items():
        offset = int(partial.get(digest, 0))
        offset = 0 if offset > size else offset
        total += len(protocol.frame_header(digest, size, offset)) + size - offset
    return total


def ship_blobs(connect: Callable[[], AgentClient], blobs: Sequence[Tuple[str, int]], open_blob,
               *, partial: Optional[dict] = None, on_bytes: Optional[Callable[[int], None]] = None,
               attempts: int = 6, max_wait: float = 5.0) -> ShipResult:
    """Send `blobs` [(digest, size)] to the agent that `connect()` returns.

    After a dropped connection, `connect()` is called again, the agent says how much of each blob
    it already holds (`have` -> partial), and only the rest travels. The agent verifies every blob
    against its digest before keeping it.
    """
    sizes = dict(blobs)
    sent = 0
    lock = threading.Lock()
    state = {"partial": dict(partial or {}), "attempt": 0, "host": ""}

    def count(n: int) -> None:
        nonlocal sent
        with lock:
            sent += n
        if on_bytes:
            on_bytes(n)

    def attempt() -> None:
        state["attempt"] += 1
        client = connect()
        state["host"] = client.host
        todo = dict(sizes)
        if state["attempt"] > 1:
            have = client.have(list(sizes))
            for d in have.get("present", []):
                todo.pop(d, None)
            state["partial"] = dict(have.get("partial", {}))
        if not todo:
            return
        frames = protocol.iter_frames(todo, state["partial"], open_blob)
        answer = client.send_blobs(frames, on_bytes=count, nbytes=stream_size(todo, state["partial"]))
        missing = [d for d in todo if d not in set(answer.get("stored", [])) | set(answer.get("present", []))]
        if missing:
            raise TransportError(f"agent did not keep {len(missing)} blob(s): {missing[0]}", host=client.host)

    if not sizes:
        return ShipResult("", 0, 0, 0)
    for try_ in Retrying(stop=stop_after_attempt(attempts), reraise=True,
                         wait=wait_exponential(multiplier=0.2, max=max_wait),
                         retry=retry_if_exception_type(TransportError)):
        with try_:
            attempt()
    return ShipResult(state["host"], len(sizes), sent, state["attempt"])
