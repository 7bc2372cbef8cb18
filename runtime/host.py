"""One host as the reconcile loop sees it: ``observe`` reads the world (container dirs, /proc,
nft, state files) into the planner's ``Observed``; ``execute`` runs one step through the
executor map (``executors.py``), journaled before and after; ``attempt`` turns a release's own
failure into a failed release. The loop itself is ``reconcile.py``; decisions are ``planner.py``.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, Optional, Tuple

from runtime import container, health, names, network, oci, planner, unpack
from runtime.executors import EXECUTORS, exec_in
from runtime.resources import free_disk, free_memory
from runtime.errors import AgentFailure
from runtime.layout import Layout
from runtime.meta import Meta, list_metas, list_orphans, log_path, log_tail, status_of
from runtime.planner import Begin, CheckHealth, Observed, Start, Switch, Unpack, Want
from runtime.spec import Target
from runtime.state import State

RELEASE_STEPS = (Start, Begin, CheckHealth, Switch)
RESTART_RESET_AFTER = 60.0


def want_of(name: str, t: Target) -> Want:
    d = t.deploy
    ports = tuple(sorted((p.protocol, p.host, p.container) for p in d.ports))
    return Want(service=name, release=t.release, manifest=t.manifest, ports=ports,
                drain=d.drain, monitor=d.monitor, stop_first=d.stop_first,
                keep_releases=d.keep_releases, memory=d.resources.memory or 0,
                exclusive=bool(d.one_slot), exclusive_why=d.one_slot)


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
        target = self.targets()
        changed = False
        now = self.clock()
        for name, cur in sorted(st["current"].items()):
            meta = self.metas.get((name, cur["slot"]))
            t = target.get(name)
            if meta is None or t is None or meta.release != cur["release"]:
                continue
            spec = t.deploy.health
            if spec.kind == "none" or now - last.get(name, 0.0) < spec.interval:
                continue
            last[name] = now
            if not oci.proc_alive(meta.pid, meta.starttime):
                continue
            ok, msg = health.probe(spec, meta.ip, exec_in(self, meta))
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
    def targets(self) -> Dict[str, Target]:
        """The persisted target, parsed (and checked) once per read."""
        return {n: Target.from_json(n, t) for n, t in sorted(self.state.target().items())}

    def wants(self) -> Tuple[Want, ...]:
        return tuple(want_of(n, t) for n, t in self.targets().items())

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
        current = tuple(planner.Current(s, c["release"], c["slot"], float(c.get("since") or 0.0))
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
        failed = frozenset((s, r) for s, rels in st["failed"].items() for r in rels)
        holder = self.state.lock_mark() if any(m.prepared for m in metas) else None
        held = frozenset(m.instance for m in metas if holder and m.prepared == holder)
        return Observed(boxes=tuple(boxes), current=current,
                        healthy=frozenset(st["healthy"]), settled=frozenset(st["settled"]),
                        failed=failed, port_map=port_map, network_ready=ready, images=images,
                        restarts=tuple(restarts), now=now,
                        history=tuple(sorted((s, tuple(h)) for s, h in st["history"].items())),
                        free_memory=free_memory(), free_disk=self.usable_disk(), held=held)

    def usable_disk(self) -> int:
        """Free disk beyond the reserve the image budget keeps (``unpack.Budget``): the image
        itself is unpacked within its budget, refused while it streams if it does not fit."""
        reserve = unpack.load_budget(self.layout.config).reserve_bytes(self.layout.root)
        return free_disk(self.layout.root) - reserve

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
                msg += log_tail(self.layout, step.service, step.slot)   # the failed slot's own
            else:
                raise
            for w in owners:
                self.mark_failed(w.service, w.release, msg)
            return msg

    # --- helpers for executors ----------------------------------------------------------
    def target_of(self, service: str) -> Target:
        t = self.targets().get(service)
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
        network.run_switch_ports(entries, names.read_names(self.layout))
        self._port_map = tuple(sorted(entries))

    def fresh_boxes(self):
        out = []
        for m in list_metas(self.layout):
            out.append(planner.Box(m.service, m.slot, m.release, m.instance,
                                   status_of(m, self.rt), m.ip))
        return out
