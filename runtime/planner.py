"""The pure planner: ``plan(desired, observed) -> [Step]``. No I/O, no clock.

It is the one place that decides: which slot to start, when to switch, when a release that
failed in its settle window is reverted (``Revert``), what the rollback history becomes
(carried by ``Switch``/``Revert``), whether a second slot fits (``fits``) or the release fails.
Executors only carry steps out.

Every service has two slots, ``a`` and ``b``. ``current`` names the slot that serves (the one
the port map points at). A replacement starts the other slot, checks its health, switches,
settles (the monitor window, the old slot still there to revert to) and, once the drain since
the switch is over, stops the old slot (in the background: see ``Stop``). Each step is emitted only when its
precondition holds in ``observed``; the caller runs one step and observes again, so an
interrupted swap simply resumes from what is there (or unwinds once a release is marked failed).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, FrozenSet, List, Optional, Tuple, Union

SLOTS = ("a", "b")
BACKOFF_BASE = 0.5
BACKOFF_MAX = 30.0
MIN_FREE_MEMORY = 32 << 20      # a second slot needs at least this much, or its memory limit
MIN_FREE_DISK = 64 << 20        # ... and this much disk (its image is unpacked by then)
PLENTY = 1 << 62


@dataclass(frozen=True)
class Want:
    service: str
    release: str
    manifest: str
    ports: Tuple[Tuple[str, int, int], ...] = ()   # (protocol, host port, container port)
    drain: float = 0.0
    monitor: float = 0.0
    stop_first: bool = False
    keep_releases: int = 3
    memory: int = 0                 # the container's memory limit (0: none)
    exclusive: bool = False       # stateful: never two slots at once, the old stops first
    exclusive_why: str = ""       # why (spec.Deploy.one_slot): stateful, or network: host


@dataclass(frozen=True)
class Box:
    """An observed container."""
    service: str
    slot: str
    release: str
    instance: str
    status: str            # running | created | stopped | gone (dir without a live runtime state)
    ip: str = ""


@dataclass(frozen=True)
class Current:
    service: str
    release: str
    slot: str
    since: float = 0.0     # when it was switched to (the clock of ``Observed.now``)


@dataclass(frozen=True)
class Restarts:
    service: str
    slot: str
    count: int
    last: float


@dataclass(frozen=True)
class Observed:
    boxes: Tuple[Box, ...] = ()
    current: Tuple[Current, ...] = ()
    healthy: FrozenSet[str] = frozenset()       # instances that passed their health check
    settled: FrozenSet[str] = frozenset()       # instances that passed drain + monitor
    failed: FrozenSet[Tuple[str, str]] = frozenset()   # (service, release)
    port_map: Tuple[Tuple[str, int, str, int], ...] = ()   # (proto, host port, ip, port)
    network_ready: bool = True
    images: FrozenSet[str] = frozenset()        # unpacked manifests
    restarts: Tuple[Restarts, ...] = ()
    now: float = 0.0
    history: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()   # service -> releases served before
    free_memory: int = PLENTY
    free_disk: int = PLENTY
    held: FrozenSet[str] = frozenset()          # prepared instances whose session holds the lock


# --- steps ------------------------------------------------------------------------------

@dataclass(frozen=True)
class EnsureNetwork:
    pass


@dataclass(frozen=True)
class Unpack:
    manifest: str


@dataclass(frozen=True)
class Start:
    service: str
    slot: str
    release: str


@dataclass(frozen=True)
class Begin:
    """Start a container ``prepare`` created (layers, bundle, network, ``runc create``) while an
    earlier wave ran: what is left of ``Start`` is ``runc start``."""
    service: str
    slot: str
    instance: str


@dataclass(frozen=True)
class CheckHealth:
    service: str
    slot: str
    instance: str


@dataclass(frozen=True)
class Switch:
    """Make ``slot`` serve ``release``; ``history`` is the rollback history after it."""
    service: str
    slot: str
    release: str
    history: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Revert:
    """The new release failed its settle window: ``slot`` (still running ``release``) serves
    again; the failed release does not enter the history."""
    service: str
    slot: str
    release: str
    history: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Settle:
    """Watch the new slot for the monitor window while the old one still runs; the executor
    marks the release failed when the window fails (the planner then reverts to ``fallback``)."""
    service: str
    slot: str
    instance: str
    fallback: str
    monitor: float


@dataclass(frozen=True)
class Stop:
    """Stop a slot. ``background``: the old slot after a switch that served and settled;
    `apply` answers without it (``serve`` stops it once its drain is over, and the next change
    of the service on this host waits for that first), so no rollout waits for a drain."""
    service: str
    slot: str
    why: str
    background: bool = False


@dataclass(frozen=True)
class Restart:
    """Start the serving slot again, with the release it serves (not necessarily the wanted
    one: a wanted release that failed leaves the old one serving)."""
    service: str
    slot: str
    release: str = ""


@dataclass(frozen=True)
class SyncPorts:
    entries: Tuple[Tuple[str, int, str, int], ...]


@dataclass(frozen=True)
class Fail:
    service: str
    release: str
    why: str


@dataclass(frozen=True)
class Forget:
    service: str


@dataclass(frozen=True)
class Wait:
    """Nothing to do for ``seconds``. ``blocks``: the service whose change cannot go on before
    (a next release waiting for the old slot's drain); `apply` sleeps on such a wait, and
    returns on any other (restart backoff, a drain after the switch)."""
    seconds: float
    why: str = field(default="", compare=False)
    blocks: str = ""


STEP_TYPES = (EnsureNetwork, Unpack, Start, Begin, CheckHealth, Switch, Revert, Settle, Stop, Restart,
              SyncPorts, Fail, Forget, Wait)
Step = Union[EnsureNetwork, Unpack, Start, Begin, CheckHealth, Switch, Revert, Settle, Stop, Restart,
             SyncPorts, Fail, Forget, Wait]


def backoff(count: int) -> float:
    return min(BACKOFF_MAX, BACKOFF_BASE * (2 ** max(0, count - 1))) if count else 0.0


def _other(slot: str) -> str:
    return "b" if slot == "a" else "a"


def fits(w: Want, o: Observed) -> bool:
    """Whether a second slot for ``w`` fits beside the first (its memory limit, some disk)."""
    return o.free_memory >= max(w.memory or 0, MIN_FREE_MEMORY) and o.free_disk >= MIN_FREE_DISK


def history_after(o: Observed, service: str, serving: str, previous: Optional[str],
                  keep: int) -> Tuple[str, ...]:
    """The rollback history once ``serving`` serves: ``previous`` added (if any), the serving
    release never in it, and ``keep`` - 1 kept (``keep_releases`` counts the serving one, as
    gc.trim_history does)."""
    hist = list(dict(o.history).get(service, ()))
    if previous and previous != serving:
        hist.append(previous)
    hist = [r for r in hist if r != serving]
    return tuple(hist[-(keep - 1):]) if keep > 1 else ()


def desired_ports(wants: Dict[str, Want], current: Dict[str, Current],
                  boxes: Dict[Tuple[str, str], Box],
                  unserved: FrozenSet[str] = frozenset()) -> Tuple[Tuple[str, int, str, int], ...]:
    """The port map: each wanted service's ports to its serving container, only ever a running
    one with the release it serves, none for ``unserved`` services (about to stop first)."""
    out: Dict[Tuple[str, int], Tuple[str, int, str, int]] = {}
    for name in sorted(wants):
        cur = current.get(name)
        if cur is None or name in unserved:
            continue
        box = boxes.get((name, cur.slot))
        if box is None or box.status != "running" or not box.ip or box.release != cur.release:
            continue
        for proto, host_port, cport in wants[name].ports:
            out.setdefault((proto, host_port), (proto, host_port, box.ip, cport))
    return tuple(sorted(out.values()))


def _plan_service(w: Want, o: Observed, cur: Optional[Current],
                  boxes: Dict[str, Box], restarts: Dict[str, Restarts]) -> List[Step]:
    failed = (w.service, w.release) in o.failed

    def steady(c: Current) -> List[Step]:
        """Keep the serving slot alive (restart with backoff); remove any other slot."""
        out: List[Step] = []
        box = boxes.get(c.slot)
        if box is None or box.status != "running":
            r = restarts.get(c.slot)
            wait = (r.last + backoff(r.count) - o.now) if r else 0.0
            out.append(Wait(round(wait, 3), f"{w.service}: restart backoff") if wait > 0
                       else Restart(w.service, c.slot, c.release))
        other = boxes.get(_other(c.slot))
        if other is not None and other.instance not in o.held:   # held: the next release, prepared
            if (other.release != c.release and box is not None and box.status == "running"
                    and box.instance not in o.settled and w.monitor > 0
                    and not failed and c.release == w.release and other.status == "running"):
                out.append(Settle(w.service, c.slot, box.instance, other.slot, w.monitor))
            elif draining(w, o, c, other):
                out.append(Wait(round(c.since + w.drain - o.now, 3), f"{w.service}: drain"))
            else:
                out.append(Stop(w.service, other.slot, "old slot", background=True))
        return out

    if cur is not None and cur.slot in boxes and boxes[cur.slot].release != cur.release:
        return [Stop(w.service, cur.slot, f"runs {boxes[cur.slot].release}, not the {cur.release} "
                     "it serves")]
    if failed and cur is not None and cur.release == w.release:
        back = boxes.get(_other(cur.slot))
        if back is not None and back.status == "running" and back.release != w.release:
            return [Revert(w.service, back.slot, back.release,
                           history_after(o, w.service, back.release, None, w.keep_releases))]
    if cur is not None and (cur.release == w.release or failed):
        return steady(cur)
    if failed:  # never served anything and the wanted release failed: clean up, hold
        return [Stop(w.service, b.slot, "failed release") for b in boxes.values()]

    # a replacement (or a first start) is needed
    if w.manifest not in o.images:
        return [Unpack(w.manifest)]
    new = next((b for b in boxes.values() if b.release == w.release
                and (cur is None or b.slot != cur.slot)), None)
    if new is None:
        slot = "a" if cur is None or cur.slot == "b" else "b"
        stale = boxes.get(slot)
        if stale is not None and cur is not None and draining(w, o, cur, stale):
            return [Wait(round(cur.since + w.drain - o.now, 3), f"{w.service}: drain of the "
                         "old slot before the next release", blocks=w.service)]
        if stale is not None:
            return [Stop(w.service, slot, "stale slot")]
        if stops_first(w, o, cur, boxes):
            why = (w.exclusive_why or "stateful, one slot at a time") if w.exclusive \
                else "blue/green does not fit"
            return [Stop(w.service, cur.slot, f"stop-first: {why}")]
        if not fits(w, o) and not ((w.stop_first or w.exclusive) and cur is not None):
            return [Fail(w.service, w.release, "not enough free disk or memory for a "
                         "second slot (set stop_first to allow stop-first)")]
        return [Start(w.service, slot, w.release)]
    if new.status == "created" and new.instance in o.held:
        return [Begin(w.service, new.slot, new.instance)]
    if new.status in ("created", "gone"):
        return [Stop(w.service, new.slot, "interrupted start")]
    if new.status != "running":
        return [Fail(w.service, w.release, "container exited before it became healthy")]
    if new.instance not in o.healthy:
        return [CheckHealth(w.service, new.slot, new.instance)]
    return [Switch(w.service, new.slot, w.release,
                   history_after(o, w.service, w.release, cur.release if cur else None,
                                 w.keep_releases))]


def draining(w: Want, o: Observed, cur: Current, old: Box) -> bool:
    """The old slot still finishes the connections it had when ``cur`` was switched to: it
    runs another release and the drain window since the switch is not over."""
    return (old.status == "running" and old.release != cur.release and w.drain > 0
            and o.now < cur.since + w.drain)


def stops_first(w: Want, o: Observed, cur: Optional[Current], boxes: Dict[str, Box]) -> bool:
    """A replacement that stops the serving slot before it starts the new one: a stateful
    service (one slot at a time on its volumes), or one that does not fit and may stop first.
    Its ports are unmapped before it stops."""
    return (cur is not None and cur.release != w.release and cur.slot in boxes
            and (w.service, w.release) not in o.failed
            and not any(b.release == w.release for b in boxes.values())
            and (w.exclusive or (w.stop_first and not fits(w, o))))


def plan(desired: Tuple[Want, ...], observed: Observed) -> List[Step]:
    """Steps whose preconditions hold now: work first (network, then per service), waits
    last (the shortest one, and each that blocks a service's change)."""
    o = observed
    if not o.network_ready and (desired or o.boxes):
        return [EnsureNetwork()]
    wants = {w.service: w for w in desired}
    current = {c.service: c for c in o.current}
    by_service: Dict[str, Dict[str, Box]] = {}
    for b in o.boxes:
        by_service.setdefault(b.service, {})[b.slot] = b
    restarts: Dict[str, Dict[str, Restarts]] = {}
    for r in o.restarts:
        restarts.setdefault(r.service, {})[r.slot] = r
    work: List[Step] = []
    waits: List[Wait] = []
    for name in sorted(set(by_service) | set(current)):
        if name not in wants:
            work.extend(Stop(name, slot, "service removed")
                        for slot, b in sorted(by_service.get(name, {}).items())
                        if b.instance not in o.held)      # held: a new service, prepared
            if name in current and not by_service.get(name):
                work.append(Forget(name))
    for name in sorted(wants):
        for s in _plan_service(wants[name], o, current.get(name), by_service.get(name, {}),
                               restarts.get(name, {})):
            (waits if isinstance(s, Wait) else work).append(s)
    flat = {(b.service, b.slot): b for b in o.boxes}
    unserved = frozenset(n for n, w in wants.items()
                         if stops_first(w, o, current.get(n), by_service.get(n, {})))
    ports = desired_ports(wants, current, flat, unserved)
    if ports != tuple(sorted(o.port_map)):
        work.insert(0, SyncPorts(ports))
    if waits:
        first = min(waits, key=lambda w: w.seconds)
        work.append(first)
        work.extend(w for w in waits if w.blocks and w is not first)   # each blocked change
    return work
