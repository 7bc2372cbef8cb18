"""The reconcile loop, shared by ``apply`` (converge until done) and ``serve`` (one step a
tick): observe -> plan (pure) -> run one step -> observe again."""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Iterable, Optional, Set

from runtime import planner
from runtime.planner import EnsureNetwork, SyncPorts, Unpack, Wait

if TYPE_CHECKING:  # the executors get the Host that runs them
    from runtime.host import Host


def next_steps(h, only: Optional[Set[str]] = None):
    """(steps, wants, observed) now; with ``only``, the steps of those services plus the
    host-wide ones they need (network, port map, their images)."""
    wants = h.wants()
    obs = h.observe(wants)
    steps = planner.plan(wants, obs)
    if only is not None:
        steps = [s for s in steps if getattr(s, "service", None) in only
                 or isinstance(s, (SyncPorts, EnsureNetwork))
                 or (isinstance(s, Unpack) and any(
                     w.manifest == s.manifest for w in wants if w.service in only))]
    return steps, wants, obs


def converge(h, services: Optional[Iterable[str]] = None, max_errors: int = 3) -> None:
    """Run steps until nothing is left for ``services`` (all when None); waits are slept
    only when nothing else is to be done; a step failing ``max_errors`` times raises."""
    only: Optional[Set[str]] = set(services) if services is not None else None
    errors: Dict[str, int] = {}
    while True:
        steps, wants, obs = next_steps(h, only)
        if not steps:
            h.maintain()
            return
        step = steps[0]
        if isinstance(step, Wait):
            h.sleep(min(max(step.seconds, 0.01), 1.0))
            continue
        key = repr(step)
        try:
            h.attempt(step, wants, obs)
            errors.pop(key, None)
        except Exception:
            errors[key] = errors.get(key, 0) + 1
            if errors[key] >= max_errors:
                raise
            h.sleep(0.2 * errors[key])


def tick(h, probes: Optional[dict] = None) -> float:
    """``serve``: run at most one step (under the converge lock, so it never interleaves with
    an ``apply``); return how long to sleep before the next tick."""
    with h.state.flock("converge.lock", blocking=False) as got:
        if not got:
            return 0.1
        steps, wants, obs = next_steps(h)
        work = [s for s in steps if not isinstance(s, Wait)]
        if work:  # a failure that is not a release's own raises: serve backs off
            h.attempt(work[0], wants, obs)
            return 0.0
        h.maintain()
        if probes is not None:
            h.probe_serving(probes)
        if steps:
            return max(0.01, min(steps[-1].seconds, 1.0))
        return 1.0


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
