"""Run one function per host in parallel, with a bound; partial failure is a value, not a crash."""
from __future__ import annotations

import threading
from dataclasses import field
from typing import Callable, Dict, Generic, Iterable, Optional, TypeVar

from orchestrator.errors import OrchError
from runtime.records import Mutable, mutable

T = TypeVar("T")
H = TypeVar("H")


@mutable
class FanOutResult(Mutable, Generic[T]):
    ok: Dict[str, T] = field(default_factory=dict)
    failed: Dict[str, OrchError] = field(default_factory=dict)

    @property
    def all_ok(self) -> bool:
        return not self.failed


def fan_out(hosts: Iterable[H], fn: Callable[[H], T], *, name: Callable[[H], str] = lambda h: h.name,
            max_parallel: int = 16, on_done: Optional[Callable[[str, Optional[T], Optional[OrchError]], None]] = None
            ) -> FanOutResult[T]:
    """Call `fn(host)` for every host, at most `max_parallel` at once.

    An `OrchError` (or any other exception, wrapped) from one host lands in `.failed` under its
    name; the other hosts carry on.
    """
    hosts = list(hosts)
    result: FanOutResult[T] = FanOutResult()
    if not hosts:
        return result

    names = [name(h) for h in hosts]        # a name that cannot be told fails here, at once

    def one(i: int):
        try:
            return fn(hosts[i]), None
        except OrchError as exc:
            return None, exc
        except Exception as exc:  # noqa: BLE001 - a host's failure must not take the others down
            wrapped = OrchError(f"{names[i]}: {type(exc).__name__}: {exc}")
            wrapped.__cause__ = exc
            return None, wrapped

    # plain threads, not concurrent.futures (whose import, logging's with it, every command
    # paid): workers take the hosts in order; results are handed on in that order. Anything
    # else a host's call raises (SystemExit, KeyboardInterrupt) is raised here, as the pool
    # raised it; and once this thread stops early, no host not yet begun is begun, and it
    # waits for the calls under way (their hosts' sessions) before it raises.
    done = [threading.Event() for _ in hosts]
    answers: list = [None] * len(hosts)
    todo = iter(range(len(hosts)))
    take = threading.Lock()
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            with take:
                i = next(todo, None)
            if i is None:
                return
            try:
                answers[i] = one(i)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                answers[i] = exc
            finally:
                done[i].set()

    workers = [threading.Thread(target=worker, daemon=True, name="fan-out")
               for _ in range(max(1, min(max_parallel, len(hosts))))]
    for w in workers:
        w.start()
    try:
        for i in range(len(hosts)):
            done[i].wait()
            if isinstance(answers[i], BaseException):
                raise answers[i]
            value, error = answers[i]
            if error is None:
                result.ok[names[i]] = value
            else:
                result.failed[names[i]] = error
            if on_done:
                on_done(names[i], value, error)
    finally:
        stop.set()
        for w in workers:
            w.join()
    return result
