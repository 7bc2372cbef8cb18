"""Executors: one thin function per planner step type, ``EXECUTORS`` maps each type to its
function. A step type without an executor fails at import, not on a host at 3 a.m."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Dict

from runtime import container, health, network, oci, planner, unpack
from runtime.errors import AgentFailure, HealthFailure
from runtime.meta import Meta, list_metas, rt_of
from runtime.spec import Deploy, Target
from runtime.planner import (Begin, CheckHealth, EnsureNetwork, Fail, Forget, Observed, Restart,
                             Revert, Settle, Start, Stop, Switch, SyncPorts, Unpack, Wait)

if TYPE_CHECKING:  # the executors get the Host that runs them
    from runtime.host import Host

def exec_in(h: Host, meta: Meta):
    rt = rt_of(meta, h.rt)
    return lambda cmd, timeout: oci.run_exec(rt, meta.id, list(cmd), timeout)


def ex_ensure_network(h: Host, step: EnsureNetwork, obs: Observed) -> None:
    h._port_map = None
    network.run_ensure_host_network()


def ex_unpack(h: Host, step: Unpack, obs: Observed) -> None:
    unpack.unpack_image(h.layout, step.manifest)


def _start(h: Host, service: str, slot: str, release: str = "") -> Meta:
    target = h.target_of(service)
    if release and release != target.release:     # a restart of what serves, not of the target
        rec = (h.state.records().get(service) or {}).get(release)
        if rec is None:
            raise AgentFailure(f"{service}: release {release} is not known on this host")
        target = Target.from_json(service, rec)
    return make_container(h, service, slot, target, h.state.secrets(service))


def make_container(h: Host, service: str, slot: str, target: Target, secrets: Dict[str, str],
                   prepared: str = "") -> Meta:
    """A container for ``target`` in ``slot`` with the next free address: started, or only
    created for the session holding lock ``prepared`` (see ``Begin``)."""
    st = h.state.status()
    used = [m.ip for m in list_metas(h.layout)]
    ip, cursor = network.allocate_ip(used, int(st["ipam"]))
    st["ipam"] = cursor
    h.state.save_status(st)
    return container.create(h.layout, h.rt, h.host_id, service, slot, target, secrets, ip,
                            prepared=prepared)


def _forget_restarts(h: Host, service: str, slot: str) -> None:
    st = h.state.status()
    if st["restarts"].pop(f"{service}/{slot}", None) is not None:
        h.state.save_status(st)             # a new container starts with no crash record


def ex_start(h: Host, step: Start, obs: Observed) -> None:
    _forget_restarts(h, step.service, step.slot)     # whether it fits was the planner's call
    _start(h, step.service, step.slot)


def ex_begin(h: Host, step: Begin, obs: Observed) -> None:
    _forget_restarts(h, step.service, step.slot)
    container.begin(h.layout, h.rt, h.metas[(step.service, step.slot)])


def ex_check_health(h: Host, step: CheckHealth, obs: Observed) -> None:
    meta = h.metas[(step.service, step.slot)]
    spec = h.target_of(step.service).deploy.health
    ok, msg = health.run_until_healthy(
        spec, meta.ip, exec_in(h, meta),
        lambda: oci.proc_alive(meta.pid, meta.starttime))
    if not ok:
        raise HealthFailure(f"{step.service}: new release {meta.release} is unhealthy: {msg}")
    st = h.state.status()
    st["healthy"].append(step.instance)
    h.state.save_status(st)


def ex_switch(h: Host, step: Switch, obs: Observed) -> None:
    st = h.state.status()
    st["current"][step.service] = {"release": step.release, "slot": step.slot,
                                   "since": round(h.clock(), 3)}
    st["history"][step.service] = list(step.history)
    h.state.save_status(st)
    h.sync_ports(obs.boxes)


def ex_revert(h: Host, step: Revert, obs: Observed) -> None:
    ex_switch(h, Switch(step.service, step.slot, step.release, step.history), obs)
    h.log(f"{step.service}: reverted to {step.release}")


def ex_settle(h: Host, step: Settle, obs: Observed) -> None:
    meta = h.metas[(step.service, step.slot)]
    spec = h.target_of(step.service).deploy.health
    ok, why = True, None
    if step.monitor > 0:
        ok, why = health.watch(spec, meta.ip,
                               exec_in(h, meta),
                               lambda: oci.proc_alive(meta.pid, meta.starttime), step.monitor,
                               sleep=h.sleep)
    if not ok:      # the planner reverts to the fallback slot (Revert) on its next pass
        h.mark_failed(step.service, meta.release, f"reverted: {why}")
        return
    st = h.state.status()
    st["settled"].append(step.instance)
    h.state.save_status(st)


def _record_of(h: Host, meta: Meta):
    """The target a container was started from, after its service left the target (``remove``):
    its stop_timeout and pre_stop still hold."""
    from runtime.gc import read_records
    from runtime.spec import Target
    rec = (read_records(h.layout).get(meta.service) or {}).get(meta.release)
    try:
        return Target.from_json(meta.service, rec) if rec else None
    except Exception:  # noqa: BLE001 - an unreadable record: the default timeout
        return None


def ex_stop(h: Host, step: Stop, obs: Observed) -> None:
    meta = h.metas.get((step.service, step.slot))
    if meta is None:
        return
    t = h.targets().get(step.service) or _record_of(h, meta)   # removed: its release's record
    timeout = t.deploy.stop_timeout if t is not None else Deploy.stop_timeout
    if t is not None and t.deploy.pre_stop and meta.started and oci.proc_alive(meta.pid, meta.starttime):
        # (never in a container that was only created: nothing of its image has run yet)
        code = exec_in(h, meta)(t.deploy.pre_stop, timeout)      # e.g. a database's own shutdown
        if code != 0:
            h.log(f"{step.service}: pre_stop exited {code}; stopping anyway")
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
    _start(h, step.service, step.slot, step.release)


def ex_sync_ports(h: Host, step: SyncPorts, obs: Observed) -> None:
    h.switch_ports(step.entries)


def ex_fail(h: Host, step: Fail, obs: Observed) -> None:
    h.mark_failed(step.service, step.release, step.why)


def ex_forget(h: Host, step: Forget, obs: Observed) -> None:
    st = h.state.status()
    st["current"].pop(step.service, None)
    h.state.save_status(st)


EXECUTORS: Dict[type, Callable] = {
    EnsureNetwork: ex_ensure_network, Unpack: ex_unpack, Start: ex_start, Begin: ex_begin,
    CheckHealth: ex_check_health, Switch: ex_switch, Revert: ex_revert, Settle: ex_settle,
    Stop: ex_stop,
    Restart: ex_restart, SyncPorts: ex_sync_ports, Fail: ex_fail, Forget: ex_forget,
}

_missing = [t.__name__ for t in planner.STEP_TYPES if t not in EXECUTORS and t is not Wait]
if _missing:
    raise ImportError("steps without an executor: " + ", ".join(_missing))
