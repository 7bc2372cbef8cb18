"""The reconcile loop on one host: observe -> plan -> run one step -> observe again.

``observe`` reads the world (container dirs, /proc, nft, state files); ``plan`` (pure, in
planner.py) decides; ``EXECUTORS`` maps each step type to a thin function. Every step is
journaled before and after it runs.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, Iterable, Optional, Set, Tuple

from runtime import container, health, network, oci, planner, unpack
from runtime.resources import free_disk, free_memory
from runtime.errors import AgentFailure, HealthFailure, NoRoom
from runtime.layout import Layout
from runtime.meta import Meta, list_metas, list_orphans, log_path, rt_of, status_of
from runtime.planner import (CheckHealth, EnsureNetwork, Fail, Forget, Observed, Restart,
                             Settle, Start, Stop, Switch, SyncPorts, Unpack, Wait, Want)
from runtime.state import State

RELEASE_STEPS = (Start, CheckHealth, Switch)
RESTART_RESET_AFTER = 60.0
MIN_FREE_MEMORY = 32 << 20
MIN_FREE_DISK = 64 << 20


def want_of(name: str, t: dict) -> Want:
    d = t.get("deploy") or {}
    ports = tuple(sorted((p.get("protocol", "tcp"), int(p["host"]), int(p["container"]))
                         for p in d.get("ports") or []))
    return Want(service=name, release=t["release"], manifest=t["manifest"], ports=ports,
                drain=float(d.get("drain", 0.0) or 0.0),
                monitor=float(d.get("monitor", 0.0) or 0.0),
                stop_first=bool(d.get("stop_first", False)))


class Host:
    def __init__(self, layout: Layout, rt: oci.Runtime, clock=time.time, sleep=time.sleep,
                 log: Callable[[str], None] = lambda msg: None):
        self.layout = layout
        self.rt = rt
        self.state = State(layout, clock)
        self.clock = clock
        self.sleep = sleep
        self.log = log
        self.host_id = layout.host_id()
        self.metas: Dict[Tuple[str, str], Meta] = {}
        # The agent is the only writer of its nft table: read it once per process, then track
        # what this process wrote (a later process reads it again).
        self._port_map: Optional[Tuple] = None

    def maintain(self) -> None:
        """Housekeeping outside the plan: keep every container log under its size bound."""
        for m in list_metas(self.layout):
            container.bound_log(log_path(self.layout, m.service, m.slot))

    def probe_serving(self, last: Dict[str, float]) -> None:
        """``serve`` only: run each serving container's health check once per interval and
        record the outcome (status shows it); an unhealthy container is reported, not
        replaced (a crash is what restarts it)."""
        st = self.state.status()
        target = self.state.target()
        changed = False
        now = self.clock()
        for name, cur in sorted(st["current"].items()):
            meta = self.metas.get((name, cur["slot"]))
            t = target.get(name)
            if meta is None or t is None or meta.release != cur["release"]:
                continue
            spec = health.HealthSpec.from_deploy(t.get("deploy") or {})
            if spec.kind == "none" or now - last.get(name, 0.0) < spec.interval:
                continue
            last[name] = now
            if not oci.proc_alive(meta.pid, meta.starttime):
                continue
            ok, msg = health.probe(spec, meta.ip, _exec_in(self, meta))
            rec = st.setdefault("health", {}).get(name) or {}
            if rec.get("instance") != meta.instance:
                rec = {}  # a new container starts with a clean record
            fails = 0 if ok else int(rec.get("fails", 0)) + 1
            state = "healthy" if ok else ("unhealthy" if fails >= spec.retries else
                                          rec.get("state", "healthy"))
            new = {"state": state, "fails": fails, "instance": meta.instance,
                   "since": rec["since"] if rec.get("state") == state else round(now, 3),
                   "last": msg[:200]}
            if {k: v for k, v in new.items() if k != "last"} != \
                    {k: v for k, v in rec.items() if k != "last"}:
                st["health"][name] = new
                changed = True
        if changed:
            self.state.save_status(st)

    def forget_cache(self) -> None:
        self._port_map = None

    # --- observe ------------------------------------------------------------------------
    def wants(self) -> Tuple[Want, ...]:
        return tuple(want_of(n, t) for n, t in sorted(self.state.target().items()))

    def observe(self, wants: Tuple[Want, ...]) -> Observed:
        st = self.state.status()
        now = self.clock()
        metas = list_metas(self.layout)
        metas += list_orphans(self.layout, self.host_id, metas)
        self.metas = {(m.service, m.slot): m for m in metas}
        boxes = []
        for m in metas:
            status = status_of(m, self.rt)
            boxes.append(planner.Box(m.service, m.slot, m.release, m.instance, status, m.ip))
        if self._port_map is None:
            table, port_map = network.read_port_map()
            self._port_map = port_map if table else None
        else:
            table, port_map = True, self._port_map
        ready = table and network.bridge_exists()
        current = tuple(planner.Current(s, c["release"], c["slot"])
                        for s, c in sorted(st["current"].items()))
        restarts = []
        running_since = {(m.service, m.slot): m.created for m in metas}
        for key, (count, last) in sorted(st["restarts"].items()):
            svc, _, slot = key.rpartition("/")
            if now - running_since.get((svc, slot), now) > RESTART_RESET_AFTER:
                continue
            restarts.append(planner.Restarts(svc, slot, int(count), float(last)))
        images = frozenset(w.manifest for w in wants
                           if unpack.is_unpacked(self.layout, w.manifest))
        cur_rel = {c.service: c.release for c in current}
        no_room = frozenset(w.service for w in wants
                            if cur_rel.get(w.service) != w.release and not self.fits(w))
        failed = frozenset((s, r) for s, rels in st["failed"].items() for r in rels)
        return Observed(boxes=tuple(boxes), current=current,
                        healthy=frozenset(st["healthy"]), settled=frozenset(st["settled"]),
                        failed=failed, port_map=port_map, network_ready=ready, images=images,
                        no_room=no_room, restarts=tuple(restarts), now=now)

    def fits(self, w: Want) -> bool:
        t = self.state.target().get(w.service) or {}
        mem = ((t.get("deploy") or {}).get("resources") or {}).get("memory") or 0
        need_mem = max(int(mem), MIN_FREE_MEMORY)
        need_disk = MIN_FREE_DISK
        if not unpack.is_unpacked(self.layout, w.manifest):
            try:
                need_disk += 3 * unpack.image_size(self.layout, w.manifest)
            except AgentFailure:
                pass
        return free_memory() >= need_mem and free_disk(self.layout.root) >= need_disk

    # --- execute ------------------------------------------------------------------------
    def execute(self, step, obs: Observed) -> None:
        name = type(step).__name__
        self.state.journal(name, "begin", **step.__dict__)
        try:
            EXECUTORS[type(step)](self, step, obs)
        except BaseException as exc:
            self.state.journal(name, "error", error=str(exc)[:500])
            raise
        self.state.journal(name, "done")

    def mark_failed(self, service: str, release: str, why: str) -> None:
        st = self.state.status()
        st["failed"].setdefault(service, {})[release] = why[:1000]
        self.state.save_status(st)
        self.log(f"{service}: release {release} failed: {why}")

    def attempt(self, step, wants: Tuple[Want, ...], obs: Observed) -> Optional[str]:
        """Run one step. A failure of a step that belongs to a release (unpack, start, health
        check, switch) marks that release failed, so the old slot keeps serving and the
        planner unwinds the new one; that failure is returned. Any other failure raises."""
        try:
            self.execute(step, obs)
            return None
        except Exception as exc:
            msg = exc.message if isinstance(exc, AgentFailure) else \
                f"{type(exc).__name__}: {exc}"
            self.log(f"{type(step).__name__} failed: {msg}")
            if isinstance(step, Unpack):
                owners = [w for w in wants if w.manifest == step.manifest]
            elif isinstance(step, RELEASE_STEPS):
                owners = [w for w in wants if w.service == step.service]
            else:
                raise
            for w in owners:
                self.mark_failed(w.service, w.release, msg)
            return msg

    def converge(self, services: Optional[Iterable[str]] = None, max_errors: int = 3) -> None:
        """Run steps until nothing is left for ``services`` (all when None); waits are slept
        only when nothing else is to be done; a step failing ``max_errors`` times raises."""
        only: Optional[Set[str]] = set(services) if services is not None else None
        errors: Dict[str, int] = {}
        while True:
            wants = self.wants()
            obs = self.observe(wants)
            steps = planner.plan(wants, obs)
            if only is not None:
                steps = [s for s in steps if getattr(s, "service", None) in only
                         or isinstance(s, (SyncPorts, EnsureNetwork))
                         or (isinstance(s, Unpack) and any(
                             w.manifest == s.manifest for w in wants if w.service in only))]
            if not steps:
                self.maintain()
                return
            step = steps[0]
            if isinstance(step, Wait):
                self.sleep(min(max(step.seconds, 0.01), 1.0))
                continue
            key = repr(step)
            try:
                self.attempt(step, wants, obs)
                errors.pop(key, None)
            except Exception:
                errors[key] = errors.get(key, 0) + 1
                if errors[key] >= max_errors:
                    raise
                self.sleep(0.2 * errors[key])

    # --- helpers for executors ----------------------------------------------------------
    def target_of(self, service: str) -> dict:
        t = self.state.target().get(service)
        if t is None:
            raise AgentFailure(f"no target for service {service}")
        return t

    def sync_ports(self, obs_boxes) -> None:
        wants = {w.service: w for w in self.wants()}
        st = self.state.status()
        current = {s: planner.Current(s, c["release"], c["slot"])
                   for s, c in st["current"].items()}
        boxes = {(b.service, b.slot): b for b in obs_boxes}
        self.switch_ports(planner.desired_ports(wants, current, boxes))

    def switch_ports(self, entries) -> None:
        self._port_map = None
        network.run_switch_ports(entries)
        self._port_map = tuple(sorted(entries))

    def fresh_boxes(self):
        out = []
        for m in list_metas(self.layout):
            out.append(planner.Box(m.service, m.slot, m.release, m.instance,
                                   status_of(m, self.rt), m.ip))
        return out


# --- executors: one thin function per step type ----------------------------------------

def _exec_in(h: Host, meta: Meta):
    rt = rt_of(meta, h.rt)
    return lambda cmd, timeout: oci.run_exec(rt, meta.id, list(cmd), timeout)


def ex_ensure_network(h: Host, step: EnsureNetwork, obs: Observed) -> None:
    h._port_map = None
    network.run_ensure_host_network()


def ex_unpack(h: Host, step: Unpack, obs: Observed) -> None:
    unpack.unpack_image(h.layout, step.manifest)


def _start(h: Host, service: str, slot: str) -> Meta:
    target = h.target_of(service)
    st = h.state.status()
    used = [m.ip for m in list_metas(h.layout)]
    ip, cursor = network.allocate_ip(used, int(st["ipam"]))
    st["ipam"] = cursor
    h.state.save_status(st)
    return container.create(h.layout, h.rt, h.host_id, service, slot, target,
                            h.state.secrets(service), ip)


def ex_start(h: Host, step: Start, obs: Observed) -> None:
    w = next(w for w in h.wants() if w.service == step.service)
    if step.service in obs.no_room and not w.stop_first:
        raise NoRoom("not enough free disk or memory to start a second slot")
    _start(h, step.service, step.slot)


def ex_check_health(h: Host, step: CheckHealth, obs: Observed) -> None:
    meta = h.metas[(step.service, step.slot)]
    spec = health.HealthSpec.from_deploy(h.target_of(step.service).get("deploy") or {})
    ok, msg = health.run_until_healthy(
        spec, meta.ip, _exec_in(h, meta),
        lambda: oci.proc_alive(meta.pid, meta.starttime))
    if not ok:
        raise HealthFailure(f"{step.service}: new release {meta.release} is unhealthy: {msg}")
    st = h.state.status()
    st["healthy"].append(step.instance)
    h.state.save_status(st)


def ex_switch(h: Host, step: Switch, obs: Observed) -> None:
    st = h.state.status()
    prev = st["current"].get(step.service)
    st["current"][step.service] = {"release": step.release, "slot": step.slot,
                                   "since": round(h.clock(), 3)}
    hist = st["history"].setdefault(step.service, [])
    if prev and prev["release"] != step.release:
        hist.append(prev["release"])
    keep = int((h.target_of(step.service).get("deploy") or {}).get("keep_releases", 3) or 3)
    st["history"][step.service] = [r for r in hist if r != step.release][-keep:]
    h.state.save_status(st)
    h.sync_ports(obs.boxes)


def ex_settle(h: Host, step: Settle, obs: Observed) -> None:
    meta = h.metas[(step.service, step.slot)]
    spec = health.HealthSpec.from_deploy(h.target_of(step.service).get("deploy") or {})
    started = h.clock()
    ok, why = True, None
    if step.monitor > 0:
        ok, why = health.watch(spec, meta.ip,
                               _exec_in(h, meta),
                               lambda: oci.proc_alive(meta.pid, meta.starttime), step.monitor,
                               sleep=h.sleep)
    if not ok:
        old = h.metas.get((step.service, step.fallback))
        st = h.state.status()
        if old is not None and oci.proc_alive(old.pid, old.starttime):
            st["current"][step.service] = {"release": old.release, "slot": old.slot,
                                           "since": round(h.clock(), 3)}
            hist = st["history"].get(step.service) or []
            st["history"][step.service] = [r for r in hist if r != old.release]
        st["failed"].setdefault(step.service, {})[meta.release] = f"reverted: {why}"
        h.state.save_status(st)
        h.sync_ports(h.fresh_boxes())
        h.log(f"{step.service}: reverted {meta.release}: {why}")
        return
    rest = step.drain - (h.clock() - started)
    if rest > 0:
        h.sleep(rest)
    st = h.state.status()
    st["settled"].append(step.instance)
    h.state.save_status(st)


def ex_stop(h: Host, step: Stop, obs: Observed) -> None:
    meta = h.metas.get((step.service, step.slot))
    if meta is None:
        return
    t = h.state.target().get(step.service) or {}
    timeout = float((t.get("deploy") or {}).get("stop_timeout", 10.0) or 0.0)
    container.remove(h.layout, h.rt, meta, timeout)


def ex_restart(h: Host, step: Restart, obs: Observed) -> None:
    meta = h.metas.get((step.service, step.slot))
    if meta is not None:
        container.remove(h.layout, h.rt, meta, 1.0)
    st = h.state.status()
    key = f"{step.service}/{step.slot}"
    count = int(st["restarts"].get(key, [0, 0])[0]) + 1
    st["restarts"][key] = [count, round(h.clock(), 3)]
    h.state.save_status(st)
    h.log(f"{step.service}: restarting slot {step.slot} (attempt {count})")
    _start(h, step.service, step.slot)


def ex_sync_ports(h: Host, step: SyncPorts, obs: Observed) -> None:
    h.switch_ports(step.entries)


def ex_fail(h: Host, step: Fail, obs: Observed) -> None:
    h.mark_failed(step.service, step.release, step.why)


def ex_forget(h: Host, step: Forget, obs: Observed) -> None:
    st = h.state.status()
    st["current"].pop(step.service, None)
    h.state.save_status(st)


EXECUTORS: Dict[type, Callable] = {
    EnsureNetwork: ex_ensure_network, Unpack: ex_unpack, Start: ex_start,
    CheckHealth: ex_check_health, Switch: ex_switch, Settle: ex_settle, Stop: ex_stop,
    Restart: ex_restart, SyncPorts: ex_sync_ports, Fail: ex_fail, Forget: ex_forget,
}


def result_of(h: Host, service: str) -> Dict:
    """What apply reports for one service after converging."""
    t = h.state.target().get(service) or {}
    st = h.state.status()
    cur = st["current"].get(service)
    release = t.get("release")
    why = (st["failed"].get(service) or {}).get(release)
    ok = bool(cur and cur["release"] == release and not why)
    out = {"ok": ok, "release": cur["release"] if cur else None,
           "slot": cur["slot"] if cur else None, "wanted": release}
    if not ok:
        out["error"] = why or "not converged"
    return out
