"""The reconcile loop, shared by ``apply`` (converge until done) and ``serve`` (one step a
tick): observe -> plan (pure) -> run one step -> observe again."""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Set

from runtime import planner
from runtime.planner import EnsureNetwork, SyncPorts, Unpack, Wait
from runtime.spec import MIN_SETTLE

if TYPE_CHECKING:  # the executors get the Host that runs them
    from runtime.host import Host


def repair_lost_state(h) -> List[str]:
    """A lost ``status.json`` or ``target.json`` (deleted, a disk that lost it) is rebuilt from
    what runs, so nothing that serves is stopped or unpublished: the serving slot of each
    service is its running container the port map points at (else its newest running one),
    and its target is that release's record (``releases.json``). What was rebuilt is returned."""
    import os

    from runtime.gc import read_records
    from runtime.meta import list_metas, status_of

    st_path, t_path = (os.path.join(h.layout.state, n) for n in ("status.json", "target.json"))
    if os.path.exists(st_path) and os.path.exists(t_path):
        return []
    running = [m for m in list_metas(h.layout) if status_of(m, h.rt) == "running"]
    if not running:
        return []
    rebuilt = []
    if not os.path.exists(st_path):
        from runtime import network
        published = {ip for _, _, ip, _ in network.read_port_map()[1]}
        st = h.state.status()
        for m in sorted(running, key=lambda m: (m.ip in published, m.created)):
            st["current"][m.service] = {"release": m.release, "slot": m.slot,
                                        "since": round(m.created, 3)}
            st["healthy"].append(m.instance)
            st["settled"].append(m.instance)
        h.state.save_status(st)
        rebuilt.append("status.json")
    if not os.path.exists(t_path):
        records = read_records(h.layout)
        current = h.state.status()["current"]
        h.state.save_target({n: records[n][c["release"]] for n, c in sorted(current.items())
                             if c["release"] in (records.get(n) or {})})
        rebuilt.append("target.json")
    h.forget_cache()
    h.log(f"rebuilt {' and '.join(rebuilt)} from the running containers")
    return rebuilt


def next_steps(h, only: Optional[Set[str]] = None):
    """(steps, wants, observed) now; with ``only``, the steps of those services plus the
    host-wide ones they need (network, port map, their images)."""
    repair_lost_state(h)
    wants = h.wants()
    obs = h.observe(wants)
    steps = planner.plan(wants, obs)
    if only is not None:
        steps = [s for s in steps if getattr(s, "service", None) in only
                 or isinstance(s, (SyncPorts, EnsureNetwork))
                 or (isinstance(s, Wait) and s.blocks in only)
                 or (isinstance(s, Unpack) and any(
                     w.manifest == s.manifest for w in wants if w.service in only))]
    return steps, wants, obs


def owner(step) -> str:
    """Whose step this is: a service's name, or "" for host-wide steps (network, port map,
    images). Failures and backoff are counted per owner, so one service never holds up another."""
    return getattr(step, "service", "") or ""


def converge(h, services: Optional[Iterable[str]] = None, max_errors: int = 3,
             background: bool = True) -> Dict[str, str]:
    """Run steps until nothing is left to do for ``services`` (all when None). Restart
    backoff is not slept: what serves is judged afterwards by ``result_of``. With
    ``background``, the old slot's stop after a switch (``Stop.background``) and its drain are
    left to ``serve``: the caller answers once the new release serves. A wait that blocks a
    service's change (a next release waiting for the previous old slot's drain) is slept. A
    service whose step fails ``max_errors`` times is given up (returned with its error) while
    the others go on; a host-wide step failing that often raises."""
    only: Optional[Set[str]] = set(services) if services is not None else None
    errors: Dict[str, int] = {}
    given_up: Dict[str, str] = {}
    while True:
        steps, wants, obs = next_steps(h, only)
        work = [s for s in steps if not isinstance(s, Wait) and owner(s) not in given_up
                and not (background and getattr(s, "background", False))]
        if not work:
            blocking = [s.seconds for s in steps if isinstance(s, Wait) and s.blocks
                        and s.blocks not in given_up and (only is None or s.blocks in only)]
            if blocking:                  # a next release waits for the old slot's drain
                h.sleep(max(0.01, min(blocking)))
                continue
            h.maintain()
            return given_up
        step = work[0]
        key = repr(step)
        try:
            h.attempt(step, wants, obs)
            errors.pop(key, None)
        except Exception as exc:
            errors[key] = errors.get(key, 0) + 1
            if errors[key] >= max_errors:
                if not owner(step):
                    raise
                given_up[owner(step)] = f"{type(step).__name__} failed: " + (
                    getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}")
                if only is not None:
                    only.discard(owner(step))
                continue
            h.sleep(0.2 * errors[key])


def old_slots(h, services: Iterable[str]) -> List[str]:
    """The services among ``services`` that run a slot besides the serving one (its drain and
    stop, left by ``converge``, still to come)."""
    names = set(services)
    current = h.state.status()["current"]
    return sorted({b.service for b in h.fresh_boxes() if b.service in names
                   and b.slot != (current.get(b.service) or {}).get("slot")})


def finish_background(h, services: Iterable[str], deadline: float) -> None:
    """What `apply` left to do for ``services`` after it answered (``Stop.background`` once the
    drain is over), step by step under the converge lock, never holding it while a drain
    runs; until none is left or ``deadline`` (the host clock) passes. ``serve`` would do the
    same within a tick; whichever comes first does it, the other finds nothing to do."""
    names = set(services)
    while h.clock() < deadline:
        with h.state.flock("converge.lock"):
            steps, wants, obs = next_steps(h)
            mine = [s for s in steps if getattr(s, "background", False) and s.service in names]
            if mine:
                from runtime import snapshot
                snapshot.forget(h.layout.run)        # what runs changes: readers ask the agent
                h.attempt(mine[0], wants, obs)
                continue
            pending = old_slots(h, names)
        if not pending:
            return
        waits = [s.seconds for s in steps if isinstance(s, Wait) and s.seconds > 0]
        h.sleep(max(0.01, min(waits + [0.5])))


def tick(h, probes: Optional[dict] = None, failures: Optional[dict] = None) -> float:
    """``serve``: run at most one step (under the converge lock, so it never interleaves with
    an ``apply``); return how long to sleep before the next tick. ``failures`` (kept by the
    caller) holds per-owner backoff: a failing service waits its turn while the steps of
    every other service still run."""
    failures = {} if failures is None else failures
    with h.state.flock("converge.lock", blocking=False) as got:
        if not got:
            return 0.1
        steps, wants, obs = next_steps(h)
        now = h.clock()
        work = [s for s in steps if not isinstance(s, Wait)]
        ready = [s for s in work if failures.get(owner(s), (0, 0.0))[1] <= now]
        if ready:
            step = ready[0]
            try:
                h.attempt(step, wants, obs)
                failures.pop(owner(step), None)
            except Exception as exc:
                count = failures.get(owner(step), (0, 0.0))[0] + 1
                delay = planner.backoff(count)
                failures[owner(step)] = (count, now + delay)
                h.log(f"serve: {type(step).__name__} for {owner(step) or 'the host'} failed: "
                      f"{getattr(exc, 'message', None) or exc} (retry in {delay:.1f}s)")
                if not owner(step):
                    raise
            return 0.0
        h.maintain()
        if probes is not None:
            h.probe_serving(probes)
        waits = [s.seconds for s in steps if isinstance(s, Wait)]
        waits += [failures[owner(s)][1] - now for s in work]
        if waits:
            return max(0.01, min(min(waits), 1.0))
        return 1.0


def result_of(h: Host, service: str) -> Dict:
    """What apply reports for one service, from observation, never from a record: the wanted
    release is current, its container has run for the settle window (the deploy's monitor;
    at least MIN_SETTLE seconds for a service without a health check) and is running and
    healthy now. Call it under the converge
    lock, so ``serve`` does not restart a dying container while it is watched."""
    from runtime import health, oci
    from runtime.executors import exec_in
    from runtime.meta import list_metas, log_tail, status_of

    t = h.targets().get(service)
    st = h.state.status()
    cur = st["current"].get(service)
    release = t.release if t is not None else None
    out = {"ok": False, "release": cur["release"] if cur else None,
           "slot": cur["slot"] if cur else None, "wanted": release}
    why = (st["failed"].get(service) or {}).get(release)
    meta = next((m for m in list_metas(h.layout)
                 if cur and (m.service, m.slot) == (service, cur["slot"])), None)
    if not why and (not cur or cur["release"] != release):
        why = "not converged"
    if not why and meta is None:
        why = "no container for the serving slot"
    if not why:
        # With a health check, the check that passed before the switch and passes again below
        # is the observation; without one, only a few seconds of running tell a service that
        # dies at once from one that serves.
        settle = t.deploy.monitor if t.deploy.health.kind != "none" else max(t.deploy.monitor, MIN_SETTLE)
        age = h.clock() - meta.created
        if age < settle:
            h.sleep(settle - age)
        alive = status_of(meta, h.rt) == "running"
        if not alive:
            count = int((st["restarts"].get(f"{service}/{meta.slot}") or [0])[0])
            why = (f"container exited {max(age, 0.0):.1f}+ s after it started"
                   + (f" (restarted {count} times: crash loop)" if count else ""))
        elif t.deploy.health.kind != "none":
            ok, msg = health.run_until_healthy(t.deploy.health, meta.ip, exec_in(h, meta),
                                               lambda: oci.proc_alive(meta.pid, meta.starttime))
            if not ok:
                why = f"unhealthy: {msg}"
    if why:
        # a failed release's own log was added when it failed (host.attempt); the serving
        # slot's log belongs to another release and would mislead
        own = meta is not None and not (st["failed"].get(service) or {}).get(release)
        out["error"] = why + (log_tail(h.layout, service, meta.slot) if own else "")
    else:
        out["ok"] = True
    return out
