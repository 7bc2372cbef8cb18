"""The pure planner: ``plan(desired, observed) -> [Step]``. No I/O, no clock.

Every service has two slots, ``a`` and ``b``. ``current`` names the slot that serves (the one
the port map points at). A replacement starts the other slot, checks its health, switches,
settles (drain + monitor window) and stops the old slot. Each step is emitted only when its
precondition holds in ``observed``; the caller runs one step and observes again, so an
interrupted swap simply resumes from what is there (or unwinds once a release is marked failed).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, FrozenSet, List, Optional, Tuple, Union

SLOTS = ("a", "b")
BACKOFF_BASE = 0.5
BACKOFF_MAX = 30.0


@dataclass(frozen=True)
class Want:
    service: str
    release: str
    manifest: str
    ports: Tuple[Tuple[str, int, int], ...] = ()   # (protocol, host port, container port)
    drain: float = 0.0
    monitor: float = 0.0
    stop_first: bool = False
    exclusive: bool = False       # stateful: never two slots at once, the old stops first


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
    no_room: FrozenSet[str] = frozenset()       # services whose replacement does not fit
    restarts: Tuple[Restarts, ...] = ()
    now: float = 0.0


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
class CheckHealth:
    service: str
    slot: str
    instance: str


@dataclass(frozen=True)
class Switch:
    service: str
    slot: str
    release: str


@dataclass(frozen=True)
class Settle:
    """Keep the old slot for the drain while watching the new one for the monitor window;
    on failure, switch back to ``fallback`` and mark the release failed."""
    service: str
    slot: str
    instance: str
    fallback: str
    drain: float
    monitor: float


@dataclass(frozen=True)
class Stop:
    service: str
    slot: str
    why: str


@dataclass(frozen=True)
class Restart:
    service: str
    slot: str


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
    seconds: float
    why: str = field(default="", compare=False)


STEP_TYPES = (EnsureNetwork, Unpack, Start, CheckHealth, Switch, Settle, Stop, Restart,
              SyncPorts, Fail, Forget, Wait)
Step = Union[EnsureNetwork, Unpack, Start, CheckHealth, Switch, Settle, Stop, Restart,
             SyncPorts, Fail, Forget, Wait]


def backoff(count: int) -> float:
    return min(BACKOFF_MAX, BACKOFF_BASE * (2 ** max(0, count - 1))) if count else 0.0


def _other(slot: str) -> str:
    return "b" if slot == "a" else "a"


def desired_ports(wants: Dict[str, Want], current: Dict[str, Current],
                  boxes: Dict[Tuple[str, str], Box]) -> Tuple[Tuple[str, int, str, int], ...]:
    out: Dict[Tuple[str, int], Tuple[str, int, str, int]] = {}
    for name in sorted(wants):
        cur = current.get(name)
        if cur is None:
            continue
        box = boxes.get((name, cur.slot))
        if box is None or box.status not in ("running", "created") or not box.ip:
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
                       else Restart(w.service, c.slot))
        other = boxes.get(_other(c.slot))
        if other is not None:
            if (other.release != c.release and box is not None and box.status == "running"
                    and box.instance not in o.settled and (w.drain > 0 or w.monitor > 0)
                    and not failed and c.release == w.release and other.status == "running"):
                out.append(Settle(w.service, c.slot, box.instance, other.slot, w.drain,
                                  w.monitor))
            else:
                out.append(Stop(w.service, other.slot, "old slot"))
        return out

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
        if stale is not None:
            return [Stop(w.service, slot, "stale slot")]
        if w.exclusive and cur is not None and cur.slot in boxes:
            return [Stop(w.service, cur.slot, "stop-first: stateful, one slot at a time")]
        if w.service in o.no_room:
            if w.stop_first and cur is not None and cur.slot in boxes:
                return [Stop(w.service, cur.slot, "stop-first: blue/green does not fit")]
            if not (w.stop_first and cur is not None):
                return [Fail(w.service, w.release, "not enough free disk or memory for a "
                             "second slot (set stop_first to allow stop-first)")]
        return [Start(w.service, slot, w.release)]
    if new.status in ("created", "gone"):
        return [Stop(w.service, new.slot, "interrupted start")]
    if new.status != "running":
        return [Fail(w.service, w.release, "container exited before it became healthy")]
    if new.instance not in o.healthy:
        return [CheckHealth(w.service, new.slot, new.instance)]
    return [Switch(w.service, new.slot, w.release)]


def plan(desired: Tuple[Want, ...], observed: Observed) -> List[Step]:
    """Steps whose preconditions hold now: work first (network, then per service), waits
    last (only the shortest one)."""
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
                        for slot in sorted(by_service.get(name, {})))
            if name in current and not by_service.get(name):
                work.append(Forget(name))
    for name in sorted(wants):
        for s in _plan_service(wants[name], o, current.get(name), by_service.get(name, {}),
                               restarts.get(name, {})):
            (waits if isinstance(s, Wait) else work).append(s)
    flat = {(b.service, b.slot): b for b in o.boxes}
    ports = desired_ports(wants, current, flat)
    if ports != tuple(sorted(o.port_map)):
        work.insert(0, SyncPorts(ports))
    if waits:
        work.append(min(waits, key=lambda w: w.seconds))
    return work
