"""The fleet lock: every command that changes hosts runs inside ``mutating(...)``, and only there.

Like Kamal's ``mutating do`` block, one place decides how the lock is taken, so a new command
cannot forget it: the agent's mutating verbs (apply, rollback, remove, gc) refuse a request that
does not carry the token of the session holding the lock, and ``AgentClient`` asks for it.

Taking it across hosts cannot deadlock or split: the hosts are taken in a fixed order (sorted
names), the first one alone and first: it is the fleet's *leader*. Two sessions racing for the
same fleet meet there; exactly one gets it, the other is refused and names the holder without
having touched any other host. Whoever holds the leader takes the rest at once; a lock left on
one of them by a session that no longer holds the leader (it died, or lost a host mid-rollout)
is stale and is taken over. Any refusal releases everything taken so far.

What the lock covers is the change of what hosts should run (their targets), and the work of
a command up to the point where what it changed serves. The old slot's drain and stop after a
switch are not part of that: a host's apply answers once the new release serves, and a
detached ``finish`` of the agent that the apply started (or the host's supervisor, ``serve``,
whichever comes first) stops the old slot when its drain is over, under the host's converge
lock, as ``serve`` restarts a crashed container. That work only ever moves a host towards a
target set under the fleet lock, and the next change of that service on that host (under the
lock) first waits for the rest of the drain and stops the old slot itself, so it never meets a
half-done stop. A released lock thus does not mean "no container is stopping", only "nobody is
changing what should run".
"""
from __future__ import annotations

import contextlib
import getpass
import os
import secrets
import socket
import time
from dataclasses import field
from typing import Callable, Dict, Iterator, Mapping, Optional

from orchestrator.agent.client import AgentClient
from orchestrator.errors import LockHeldError, OrchError
from orchestrator.transport.fanout import fan_out
from runtime import protocol
from runtime.records import Mutable, mutable

LOCK_TTL = 900.0               # a session that dies leaves a lock that expires after this
MAX_PARALLEL_HOSTS = 32
REFRESH_EVERY = 60.0           # a rollout extends its lease before a wave at most this often


def operator() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


@mutable
class FleetLock(Mutable):
    """What a session holds: the token the agents check, on which hosts."""

    holder: str                                    # shown to others: "alice@laptop pid 42"
    token: str                                     # never shown: the session's proof
    clients: Dict[str, AgentClient]                # hosts held, by name
    lost: Dict[str, OrchError] = field(default_factory=dict)   # hosts that did not answer

    timeout: float = 60.0                          # deadline of each lock call
    refreshed: float = field(default_factory=time.monotonic)   # when the lease was last extended
    observed: Dict[str, dict] = field(default_factory=dict)    # host -> observe read under the lock
    last_status: Dict[str, dict] = field(default_factory=dict)  # host -> its status as released

    def refresh(self, every: float = 0.0) -> None:
        """Extend the lease (unless it was extended less than ``every`` seconds ago: a wave
        need not wait for hosts that are busy receiving blobs, the lease is 15 minutes); a host
        that does not answer in time moves to ``lost``."""
        if time.monotonic() - self.refreshed < every:
            return
        self.refreshed = time.monotonic()
        fan = _each(self.clients, lambda c: self.take(c))
        lost = {h: e for h, e in fan.failed.items() if not _refused(e)}
        self.forget(lost)
        self.lost.update(lost)

    def take(self, client: AgentClient, force: bool = False, observe: Optional[Mapping] = None):
        """Take (or extend) this session's lease on one host; with ``observe`` (its request),
        keep what the host answered to it once held in ``observed``."""
        answer = client.lock(self.holder, LOCK_TTL, self.token, force=force, timeout=self.timeout,
                             observe=observe)
        if observe is not None and isinstance(answer.get("observe"), dict):
            self.observed[client.host] = answer["observe"]
        return answer

    def add(self, clients: Mapping[str, AgentClient]) -> None:
        """Take the lock on hosts that were not reachable when it was taken (the session holds
        the fleet's leader, so it takes them over as it took the rest); one that does not
        answer moves to ``lost`` and must not be changed."""
        fan = _each(clients, lambda c: self.take(c, force=True))
        self.clients.update({h: clients[h] for h in fan.ok})
        self.lost.update(fan.failed)

    def forget(self, hosts) -> None:
        """Stop calling these hosts (they went silent): their lease runs out on its own, or the
        next holder of the fleet's first host takes it over."""
        for h in hosts:
            self.clients.pop(h, None)

    def release(self) -> None:
        """Unlock every host held; each answers with its status too (``last_status``)."""
        def one(c: AgentClient) -> None:
            answer = c.unlock(self.token, timeout=self.timeout, status=True)
            if isinstance(answer.get("status"), dict):
                self.last_status[c.host] = answer["status"]
        _each(self.clients, one)


def _each(clients: Mapping[str, AgentClient], fn):
    return fan_out(list(clients.items()), lambda kv: fn(kv[1]), name=lambda kv: kv[0],
                   max_parallel=MAX_PARALLEL_HOSTS)


def _refused(err: OrchError) -> bool:
    return getattr(err, "code", None) == protocol.E_LOCKED


def acquire(clients: Mapping[str, AgentClient], who: str, *, force: bool = False,
            timeout: float = 60.0, observe: Optional[Callable[[str], Mapping]] = None) -> FleetLock:
    """Take the lock on every host of ``clients``, or on none (LockHeldError names the holder).
    ``force`` breaks whatever lock is there (``--force-unlock``: a stale lock the TTL has not
    freed yet). A host that does not answer is in ``.lost``, not held. ``observe(host)``: the
    observe request each host answers in the same round trip, once held (``.observed``)."""
    lock = FleetLock(f"{who} pid {os.getpid()}", secrets.token_hex(16), {}, timeout=timeout)
    order = sorted(clients)
    if not order:
        return lock
    leader, rest = order[0], order[1:]
    ask = observe or (lambda host: None)
    try:
        lock.take(clients[leader], force=force, observe=ask(leader))
    except OrchError as exc:
        if _refused(exc):
            raise LockHeldError(f"fleet is locked: {exc}",
                                hint="wait for it, or use --force-unlock if it is stale") from None
        raise
    lock.clients[leader] = clients[leader]
    fan = _each({h: clients[h] for h in rest},
                lambda c: lock.take(c, force=True, observe=ask(c.host)))
    lock.clients.update({h: clients[h] for h in fan.ok})
    lock.lost.update({h: e for h, e in fan.failed.items() if not _refused(e)})
    refused = [e for e in fan.failed.values() if _refused(e)]
    if refused:   # only an agent that forbids the take-over refuses here: hold nothing
        lock.release()
        raise LockHeldError(f"fleet is locked: {refused[0]}",
                            hint="wait for it, or use --force-unlock if it is stale")
    return lock


@contextlib.contextmanager
def mutating(clients: Mapping[str, AgentClient], who: str, *, force: bool = False,
             timeout: float = 60.0, observe: Optional[Callable[[str], Mapping]] = None
             ) -> Iterator[FleetLock]:
    """``with mutating(clients, who) as lock:`` the only way a command changes hosts: the
    lock is held inside and released on every way out (``timeout``: each lock call's deadline;
    ``observe``: see ``acquire``)."""
    lock = acquire(clients, who, force=force, timeout=timeout, observe=observe)
    try:
        yield lock
    finally:
        lock.release()
