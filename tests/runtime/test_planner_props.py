"""The agent's planner as a state machine (hypothesis): from any observed state, under crashes
and failing health checks, running the first planned step and observing again

- never leaves a service's published ports pointing at two slots (at most one serving slot),
- leaves the port map pointing only at running containers after every step it takes,
- converges: the plan empties, and every wanted release that did not fail serves, running,
  with its ports mapped to it (a failed one leaves the old release serving, or nothing).

The world below is a model of what the executors do (runtime/executors.py), kept to the
effects the planner observes.
"""
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Set, Tuple

from hypothesis import given, settings, strategies as st

from runtime import planner
from runtime.planner import (Box, CheckHealth, Current, EnsureNetwork, Fail, Forget, Observed,
                             Restart, Restarts, Revert, Settle, Start, Stop, Switch, SyncPorts,
                             Unpack, Wait, Want)

RELEASES = ("r1", "r2", "r3")


@dataclass
class World:
    boxes: Dict[Tuple[str, str], Box] = field(default_factory=dict)
    current: Dict[str, Current] = field(default_factory=dict)
    healthy: Set[str] = field(default_factory=set)
    settled: Set[str] = field(default_factory=set)
    failed: Set[Tuple[str, str]] = field(default_factory=set)
    port_map: Tuple = ()
    network_ready: bool = True
    images: Set[str] = field(default_factory=set)
    free_memory: int = 1 << 40
    history: Dict[str, Tuple[str, ...]] = field(default_factory=dict)
    restarts: Dict[Tuple[str, str], Tuple[int, float]] = field(default_factory=dict)
    now: float = 1000.0
    serial: int = 0
    unhealthy: Set[str] = field(default_factory=set)    # releases whose health check fails
    unsettled: Set[str] = field(default_factory=set)    # releases that fail their monitor window

    def observe(self) -> Observed:
        return Observed(boxes=tuple(self.boxes.values()), current=tuple(self.current.values()),
                        healthy=frozenset(self.healthy), settled=frozenset(self.settled),
                        failed=frozenset(self.failed), port_map=self.port_map,
                        network_ready=self.network_ready, images=frozenset(self.images),
                        free_memory=self.free_memory,
                        history=tuple(sorted(self.history.items())),
                        restarts=tuple(Restarts(s, sl, c, t) for (s, sl), (c, t) in self.restarts.items()),
                        now=self.now)

    def new_box(self, service: str, slot: str, release: str) -> None:
        self.serial += 1
        self.boxes[(service, slot)] = Box(service, slot, release, f"i{self.serial}", "running",
                                          f"10.88.0.{self.serial}")

    def sync(self, wants: Dict[str, Want]) -> None:
        self.port_map = planner.desired_ports(wants, self.current,
                                              {k: b for k, b in self.boxes.items()})

    def run(self, step, wants: Dict[str, Want]) -> None:
        """What the executor for ``step`` does, as far as the planner can see."""
        if isinstance(step, EnsureNetwork):
            self.network_ready, self.port_map = True, ()
        elif isinstance(step, Unpack):
            self.images.add(step.manifest)
        elif isinstance(step, Start):
            self.new_box(step.service, step.slot, step.release)
        elif isinstance(step, CheckHealth):
            box = self.boxes[(step.service, step.slot)]
            if box.release in self.unhealthy:
                self.failed.add((step.service, wants[step.service].release))
                # attempt() marks the wanted release failed
            else:
                self.healthy.add(step.instance)
        elif isinstance(step, (Switch, Revert)):
            self.current[step.service] = Current(step.service, step.release, step.slot)
            self.history[step.service] = step.history
            self.sync(wants)
        elif isinstance(step, Settle):
            box = self.boxes[(step.service, step.slot)]
            if box.release in self.unsettled:
                self.failed.add((step.service, box.release))
            else:
                self.settled.add(step.instance)
        elif isinstance(step, Stop):
            self.boxes.pop((step.service, step.slot), None)
        elif isinstance(step, Restart):
            c, _ = self.restarts.get((step.service, step.slot), (0, 0.0))
            self.restarts[(step.service, step.slot)] = (c + 1, self.now)
            assert step.release == self.current[step.service].release
            self.new_box(step.service, step.slot, step.release)
        elif isinstance(step, SyncPorts):
            self.port_map = step.entries
        elif isinstance(step, Fail):
            self.failed.add((step.service, step.release))
        elif isinstance(step, Forget):
            self.current.pop(step.service, None)
        elif isinstance(step, Wait):
            self.now += max(step.seconds, 0.01)
        else:
            raise AssertionError(f"no model for {step}")


def wants_strategy():
    def build(names, rels, ports, stop_first, monitor, keep, exclusive):
        out = []
        for i, name in enumerate(names):
            rel = rels[i % len(rels)]
            out.append(Want(name, rel, "m-" + rel, ports=((("tcp", 8000 + i, 80),) if ports[i % len(ports)] else ()),
                            drain=0.0, monitor=monitor, stop_first=stop_first, keep_releases=keep,
                            memory=64 << 20, exclusive=exclusive and i == 0))
        return tuple(out)
    return st.builds(build, st.lists(st.sampled_from(["web", "api", "db"]), min_size=0, max_size=3, unique=True),
                     st.lists(st.sampled_from(RELEASES), min_size=1, max_size=3),
                     st.lists(st.booleans(), min_size=1, max_size=3), st.booleans(),
                     st.sampled_from([0.0, 5.0]), st.integers(1, 3), st.booleans())


@st.composite
def worlds(draw):
    """Any observed state: stray or half-made containers, a current slot that is gone, a stale
    port map, a network that is not there, images missing."""
    w = World(network_ready=draw(st.booleans()), now=1000.0)
    for service in draw(st.lists(st.sampled_from(["web", "api", "db", "old"]), max_size=4, unique=True)):
        for slot in draw(st.lists(st.sampled_from(planner.SLOTS), max_size=2, unique=True)):
            w.new_box(service, slot, draw(st.sampled_from(RELEASES)))
            w.boxes[(service, slot)] = replace(w.boxes[(service, slot)],
                                               status=draw(st.sampled_from(["running", "created", "stopped", "gone"])))
        if draw(st.booleans()):
            w.current[service] = Current(service, draw(st.sampled_from(RELEASES)), draw(st.sampled_from(planner.SLOTS)))
    w.images = set(draw(st.lists(st.sampled_from(["m-" + r for r in RELEASES]), max_size=3)))
    if draw(st.booleans()):
        w.port_map = (("tcp", 8000, "10.88.9.9", 80),)
    w.unhealthy = set(draw(st.lists(st.sampled_from(RELEASES), max_size=1)))
    w.unsettled = set(draw(st.lists(st.sampled_from(RELEASES), max_size=1)))
    w.free_memory = draw(st.sampled_from([1 << 40, 16 << 20]))       # room, or none for a 2nd slot
    for service in w.current:
        w.history[service] = tuple(draw(st.lists(st.sampled_from(RELEASES), max_size=3, unique=True)))
    return w


# a fault: (step index, kind, service, slot)
faults = st.lists(st.tuples(st.integers(0, 30), st.sampled_from(["crash", "vanish", "netdown"]),
                            st.sampled_from(["web", "api", "db"]), st.sampled_from(planner.SLOTS)),
                  max_size=4)


def check_ports(w: World, wants: Dict[str, Want]) -> None:
    running = {b.ip for b in w.boxes.values() if b.status == "running"}
    for proto, port, ip, cport in w.port_map:
        assert ip in running, f"port {port} maps to {ip}, not a running container: {w.port_map}"
    for name, want in wants.items():
        ips = {ip for proto, port, ip, _ in w.port_map for p in want.ports if (p[0], p[1]) == (proto, port)}
        assert len(ips) <= 1, f"{name} serves from two slots: {ips}"


def run_agent(w: World, desired: Tuple[Want, ...], faults=(), limit: int = 200) -> List:
    wants = {x.service: x for x in desired}
    taken: List = []
    for i in range(limit):
        for at, kind, service, slot in faults:
            if at == i and (service, slot) in w.boxes:
                if kind == "crash":
                    w.boxes[(service, slot)] = replace(w.boxes[(service, slot)], status="stopped")
                elif kind == "vanish":
                    del w.boxes[(service, slot)]
            elif at == i and kind == "netdown":
                w.network_ready = False
        steps = planner.plan(desired, w.observe())
        if not steps or all(isinstance(s, Wait) for s in steps) and i > max((f[0] for f in faults), default=0) \
                and not any(isinstance(s, Wait) and "restart" in s.why for s in steps):
            return taken
        step = steps[0]
        taken.append(step)
        w.run(step, wants)
        if not isinstance(step, (Wait, EnsureNetwork)):
            check_ports(w, wants)
        if isinstance(step, (Switch, Revert)):
            assert step.release not in step.history and len(step.history) <= max(0, wants[step.service].keep_releases - 1)
    raise AssertionError(f"no convergence in {limit} steps; last: {taken[-8:]}")


@settings(max_examples=80, deadline=None)
@given(w=worlds(), desired=wants_strategy(), fs=faults)
def test_the_planner_converges_from_any_state_and_keeps_its_invariants(w, desired, fs):
    run_agent(w, desired, fs)
    assert planner.plan(desired, w.observe()) == []
    wants = {x.service: x for x in desired}
    for name, want in wants.items():
        cur: Optional[Current] = w.current.get(name)
        if (name, want.release) in w.failed:
            assert cur is None or cur.release != want.release or w.boxes[(name, cur.slot)].status == "running"
            continue
        assert cur is not None and cur.release == want.release
        box = w.boxes[(name, cur.slot)]
        assert box.status == "running" and box.release == want.release
        assert [s for (n, s) in w.boxes if n == name] == [cur.slot]        # the old slot is gone
        for proto, port, cport in want.ports:
            assert (proto, port, box.ip, cport) in w.port_map
    assert not any(n not in wants for (n, _) in w.boxes)                 # removed services stopped
    assert set(w.current) <= set(wants)


@settings(max_examples=40, deadline=None)
@given(w=worlds(), desired=wants_strategy())
def test_a_converged_host_plans_nothing_again(w, desired):
    """Re-planning a converged host is a no-op (apply twice does nothing the second time)."""
    run_agent(w, desired)
    before = w.observe()
    assert planner.plan(desired, before) == []
    assert planner.plan(desired, before) == []
