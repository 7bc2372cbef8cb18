"""Ship the blobs a host lacks over one raw SSH channel; resume after a dropped link."""
from __future__ import annotations

import itertools
import threading
import time
from typing import Callable, Iterable, Iterator, Mapping, Optional, Sequence, Tuple

from orchestrator.agent.client import AgentClient
from orchestrator.errors import TransportError
from orchestrator.transport.ssh import ConnectionPool
from runtime import protocol
from runtime.records import Mutable, mutable


@mutable
class ShipResult(Mutable):
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


class RateLimit:
    """A bandwidth cap shared by every host of one deploy (the fleet's `bandwidth`): chunks
    pass once the bytes before them fit the rate since the first one."""

    PIECE = 16 << 10

    def __init__(self, bytes_per_s: float, clock=time.monotonic, sleep=time.sleep):
        self.rate, self.clock, self.sleep = float(bytes_per_s), clock, sleep
        self.lock = threading.Lock()
        self.start: Optional[float] = None
        self.sent = 0

    def wrap(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            view = memoryview(chunk)
            for i in range(0, len(view), self.PIECE):
                piece = view[i:i + self.PIECE]
                with self.lock:
                    now = self.clock()
                    if self.start is None:
                        self.start = now
                    self.sent += len(piece)
                    wait = self.sent / self.rate - (now - self.start)
                if wait > 0:
                    self.sleep(wait)
                yield bytes(piece)


def ship_blobs(connect: Callable[[], AgentClient], blobs: Sequence[Tuple[str, int]], open_blob,
               *, partial: Optional[dict] = None, on_bytes: Optional[Callable[[int], None]] = None,
               attempts: int = 6, max_wait: float = 5.0, wire=None) -> ShipResult:
    """Send `blobs` [(digest, size)] to the agent that `connect()` returns.

    After a dropped connection, `connect()` is called again, the agent says how much of each blob
    it already holds (`have` -> partial), and only the rest travels. The agent verifies every blob
    against its digest before keeping it. With `wire` (a `transport.wire.WireJob`): its rate
    limit caps the stream, and with `wire.recipes` each layer goes as an xz recipe that refers
    to the files of the layers the host holds (the host rebuilds and verifies it).
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
        recipes = wire is not None and wire.recipes and any(d in wire.layers for d in todo)
        held: list = []
        if state["attempt"] > 1 or recipes:
            have = client.call("have", {"digests": list(sizes), "layers": True}) if recipes \
                else client.have(list(sizes))
            for d in have.get("present", []):
                todo.pop(d, None)
            state["partial"] = dict(have.get("partial", {}))
            held = list(have.get("layers") or [])
        if not todo:
            return
        infos = {}
        if recipes:
            from orchestrator.transport import wire as wire_mod
            available = set(sizes) | set(have.get("present", [])) | {x.get("blob") for x in held}
            infos = {d: wire_mod.pick(wire.layers[d], available) for d in todo if d in wire.layers}
        layer_todo = sorted(infos, key=lambda d: (len(infos[d].lowers), d))
        blob_todo = {d: n for d, n in todo.items() if d not in infos}
        frames: Iterable[bytes] = protocol.iter_frames(blob_todo, state["partial"], open_blob)
        nbytes: Optional[int] = stream_size(blob_todo, state["partial"])
        if layer_todo:
            known = wire_mod.known_contents(wire.store, held)
            frames = itertools.chain(frames, *(wire_mod.iter_layer_frame(wire.store, infos[d], known)
                                               for d in layer_todo))
            nbytes = None                 # compressed as it goes: its own `receive` channel
        if wire is not None and wire.limit is not None:
            frames = wire.limit.wrap(frames)
        answer = client.send_blobs(frames, on_bytes=count, nbytes=nbytes)
        missing = [d for d in todo if d not in set(answer.get("stored", [])) | set(answer.get("present", []))]
        if missing:
            raise TransportError(f"agent did not keep {len(missing)} blob(s): {missing[0]}", host=client.host)

    if not sizes:
        return ShipResult("", 0, 0, 0)
    with_retries(attempt, attempts, max_wait)
    return ShipResult(state["host"], len(sizes), sent, state["attempt"])


RETRY_WAIT = 0.2     # seconds before the second attempt, doubling after each failed one


def with_retries(attempt: Callable[[], None], attempts: int, max_wait: float) -> None:
    """``attempt()`` until it works, at most ``attempts`` times, waiting 0.2, 0.4, 0.8 ... s
    (at most ``max_wait``) after each TransportError; the last one's error is raised. The
    retry machinery (tenacity, ~15 ms to import) is loaded once a first attempt has failed."""
    try:
        attempt()
        return
    except TransportError:
        if attempts <= 1:
            raise
    from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential
    time.sleep(min(RETRY_WAIT, max_wait))
    for try_ in Retrying(stop=stop_after_attempt(attempts - 1), reraise=True,
                         wait=wait_exponential(multiplier=2 * RETRY_WAIT, max=max_wait),
                         retry=retry_if_exception_type(TransportError)):
        with try_:
            attempt()
