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

    def one(host: H):
        try:
            return name(host), fn(host), None
        except OrchError as exc:
            return name(host), None, exc
        except Exception as exc:  # noqa: BLE001 - a host's failure must not take the others down
            wrapped = OrchError(f"{name(host)}: {type(exc).__name__}: {exc}")
            wrapped.__cause__ = exc
            return name(host), None, wrapped

    # plain threads, not concurrent.futures (whose import, logging's with it, every command
    # paid): workers take the hosts in order; results are handed on in that order
    done = [threading.Event() for _ in hosts]
    answers: list = [None] * len(hosts)
    todo = iter(range(len(hosts)))
    take = threading.Lock()

    def worker() -> None:
        while True:
            with take:
                i = next(todo, None)
            if i is None:
                return
            answers[i] = one(hosts[i])
            done[i].set()

    workers = [threading.Thread(target=worker, daemon=True, name="fan-out")
               for _ in range(max(1, min(max_parallel, len(hosts))))]
    for w in workers:
        w.start()
    for i in range(len(hosts)):
        done[i].wait()
        host_name, value, error = answers[i]
        if error is None:
            result.ok[host_name] = value
        else:
            result.failed[host_name] = error
        if on_done:
            on_done(host_name, value, error)
    for w in workers:
        w.join()
    return result
