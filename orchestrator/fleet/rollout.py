"""Roll a planned change out across the fleet: canary first, then waves; halt or roll back.

Each host's agent does the blue/green swap itself and answers once the new release serves (and
its monitor window passed) or failed with the old one still serving. This module only decides
which hosts go when, drops failed hosts, and reverts hosts on `on_failure: rollback`.
"""
from __future__ import annotations

from dataclasses import field
from typing import Callable, Dict, List, Mapping, Optional, Sequence

from orchestrator.errors import TransportError
from orchestrator.transport.fanout import fan_out
from orchestrator.fleet.planner import FleetPlan, Wave
from runtime.records import Mutable, Record, mutable, record

HOST_TIMEOUT = 60.0        # what a host may take beyond its services' own timings (unpack, start)


def apply_deadline(deploy: Mapping, base: float = HOST_TIMEOUT) -> float:
    """How long one host may take to apply (or revert) one service before it is dropped as
    silent: ``base`` plus what the deploy spec itself allows: every health retry, the monitor
    window, the drain, the old slot's stop timeout and the settle window."""
    from runtime.spec import MIN_SETTLE, Deploy
    d = Deploy.from_json(dict(deploy))
    h = d.health
    health = h.start_period + (h.retries + 1) * (h.interval + h.timeout) if h.kind != "none" else 0.0
    return round(base + health + d.monitor + d.drain + d.stop_timeout + MIN_SETTLE, 1)


@mutable
class HostOutcome(Mutable):
    host: str
    service: str
    ok: bool
    release: Optional[str] = None
    error: Optional[str] = None
    reverted: bool = False
    unreachable: bool = False                # no answer (link lost, deadline passed): dropped


@mutable
class RolloutResult(Mutable):
    outcomes: List[HostOutcome] = field(default_factory=list)
    halts: Dict[str, str] = field(default_factory=dict)       # service -> why its later waves did not run
    skipped: Dict[str, List[str]] = field(default_factory=dict)   # service -> hosts never tried

    @property
    def halted(self) -> Optional[str]:
        return "; ".join(self.halts[s] for s in sorted(self.halts)) or None

    @property
    def failed(self) -> List[HostOutcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.halts


@record
class ServicePolicy(Record):
    on_failure: str = "halt"                 # halt | rollback
    max_parallel: int = 16                   # bound on concurrent SSH work inside one wave


ApplyFn = Callable[[str, str], dict]         # (host, service) -> agent answer for that service
RevertFn = Callable[[str, str, Optional[str]], None]   # (host, service, old release)


def run_rollout(plan: FleetPlan, policies: Mapping[str, ServicePolicy], apply_one: ApplyFn,
                revert_one: RevertFn, *, dropped: Sequence[str] = (),
                on_wave: Optional[Callable[[Wave], None]] = None,
                on_outcome: Optional[Callable[[HostOutcome], None]] = None,
                ready: Optional[Callable[[str], bool]] = None) -> RolloutResult:
    """Services roll out independently: one service's failure halts (or reverts) that service
    only. A host that failed to answer (an exception: unreachable, timed out) is dropped for
    every service; a host whose agent answered that one service failed stays in the others.
    ``ready(host)`` (pipelined shipping) waits until the host's blobs are there, False when its
    shipment failed: asked for a wave's hosts only when that wave starts, so the canary goes
    while the rest still receive; a host that is not ready is dropped like one that failed
    before the rollout (reported by whoever shipped), not counted as a failed wave."""
    result = RolloutResult()
    dropped_hosts = set(dropped)
    switched: Dict[str, List[str]] = {}      # service -> hosts that switched in this rollout
    old_release = {(c.service, hp.host): c.old_release for hp in plan.hosts for c in hp.changes}

    for wave in plan.waves:
        if wave.service in result.halts:
            result.skipped.setdefault(wave.service, []).extend(wave.hosts)
            continue
        hosts = [h for h in wave.hosts if h not in dropped_hosts]
        if ready is not None:
            late = [h for h in hosts if not ready(h)]
            dropped_hosts.update(late)
            dropped = list(dropped) + late
            hosts = [h for h in hosts if h not in late]
        gone = [h for h in wave.hosts if h in dropped_hosts and h not in dropped]
        if gone:
            result.skipped.setdefault(wave.service, []).extend(gone)
        if not hosts:
            continue
        if on_wave:
            on_wave(wave)
        policy = policies.get(wave.service, ServicePolicy())

        def one(host: str, service=wave.service) -> HostOutcome:
            answer = apply_one(host, service)
            svc = (answer.get("services") or {}).get(service, answer)
            if svc.get("ok"):
                return HostOutcome(host, service, True, svc.get("release"))
            return HostOutcome(host, service, False, svc.get("release"), svc.get("error") or "failed")

        fan = fan_out(hosts, one, name=lambda h: h, max_parallel=policy.max_parallel)
        failures = []
        for host in hosts:
            if host in fan.ok:
                outcome = fan.ok[host]
            else:
                err = fan.failed[host]
                outcome = HostOutcome(host, wave.service, False, error=str(err),
                                      unreachable=_silent(err))
                dropped_hosts.add(host)
            result.outcomes.append(outcome)
            if on_outcome:
                on_outcome(outcome)
            if outcome.ok:
                switched.setdefault(wave.service, []).append(host)
            else:
                failures.append(outcome)
        if not failures:
            continue
        what = "canary" if wave.canary else f"wave {wave.number}"
        result.halts[wave.service] = (f"{wave.service}: {what} failed on "
                                      f"{', '.join(f.host for f in failures)}; later waves not started")
        if policy.on_failure == "rollback":
            # a host whose agent died mid-swap (killed, link cut) may have switched: revert it too;
            # a silent one is not called again
            died = [f.host for f in failures if f.error and not f.unreachable and f.host in dropped_hosts
                    and old_release.get((wave.service, f.host))]
            _revert(wave.service, [h for h in switched.get(wave.service, []) if h not in dropped_hosts] + died,
                    old_release, revert_one, result, policy)
    return result


def _silent(err: Exception) -> bool:
    """A host that let its deadline pass (or never answered): not called again in this rollout."""
    return isinstance(err, TransportError) and ("timed out" in str(err) or "cannot connect" in str(err))


def _revert(service: str, hosts: List[str], old_release: Mapping, revert_one: RevertFn,
            result: RolloutResult, policy: ServicePolicy) -> None:
    def one(host: str) -> None:
        revert_one(host, service, old_release.get((service, host)))

    fan = fan_out(hosts, one, name=lambda h: h, max_parallel=policy.max_parallel)
    for o in result.outcomes:
        if o.service == service and o.ok and o.host in fan.ok:
            o.reverted = True
    for host, err in fan.failed.items():
        result.outcomes.append(HostOutcome(host, service, False, error=f"rollback failed: {err}"))
