"""`orch plan` / `orch apply`: load, build, observe, plan, then lock, ship and roll out.

Calls go one way: this module wires the pure parts (manifest model, planner, rollout decisions)
to the edge modules (SSH, agent client, shipper). The CLI commands are thin wrappers around it.
"""
from __future__ import annotations

import base64
import os
import threading
from dataclasses import field
from typing import Callable, Dict, List, Mapping, Optional, Sequence

from orchestrator.agent.client import AgentClient
from orchestrator.agent.install import HostView, install_agent_and_serve, install_and_observe, read_host
from orchestrator.transport.fanout import fan_out
from orchestrator.fleet.inventory import InventoryHost, fleet_hosts, select_hosts
from orchestrator.errors import ManifestError, OrchError
from orchestrator.manifest.inputs import load_checked
from orchestrator.manifest.loader import load_desired, needs_order
from orchestrator.manifest.model import Desired
from orchestrator.fleet.lock import MAX_PARALLEL_HOSTS, REFRESH_EVERY, FleetLock, mutating, operator
from orchestrator.fleet.planner import DesiredRelease, FleetPlan, HostFacts, plan_fleet
from orchestrator.fleet.rollout import HOST_TIMEOUT, RolloutResult, ServicePolicy, apply_deadline, run_rollout
from orchestrator.transport.shipper import ShipResult, reconnecting_client, ship_blobs
from orchestrator.transport.ssh import ConnectionPool
from orchestrator.image.store import Store
from runtime import protocol
from runtime.records import Mutable, mutable

@mutable
class Prepared(Mutable):
    desired: Desired
    store: Store
    releases: List[DesiredRelease]
    hosts: List[InventoryHost]
    agent_pyz: str
    agent_digest: str
    secret_macs: Dict[str, str] = field(default_factory=dict)   # service -> keyed MAC of its secret values


@mutable
class Observed(Mutable):
    facts: Dict[str, HostFacts]
    clients: Dict[str, AgentClient]
    plan: FleetPlan


@mutable
class ApplyReport(Mutable):
    plan: FleetPlan
    shipped: Dict[str, ShipResult] = field(default_factory=dict)
    ship_failed: Dict[str, str] = field(default_factory=dict)
    lost: Dict[str, str] = field(default_factory=dict)      # hosts that stopped answering
    rollout: Optional[RolloutResult] = None
    final: Dict[str, Dict[str, Optional[str]]] = field(default_factory=dict)   # host -> service -> release
    removed: Dict[str, List[str]] = field(default_factory=dict)    # host -> services removed
    remove_failed: Dict[str, str] = field(default_factory=dict)    # "host/service" -> why

    @property
    def ok(self) -> bool:
        return (not self.plan.failed_hosts and not self.ship_failed and not self.lost
                and not self.remove_failed and (self.rollout is None or self.rollout.ok))


def prepare(directory: str, variables: Mapping[str, str], *, progress=None, bring_up_lab: bool = True,
            store: Optional[Store] = None, environ: Optional[Mapping[str, str]] = None,
            desired: Optional[Desired] = None) -> Prepared:
    """``desired``: the manifests as ``load_checked`` gave them for these same arguments (a
    command that checked its inputs first need not load them twice)."""
    from orchestrator.image import build_services

    # every input problem (secrets, --var names, step sources) before a build, a lab or a host
    if desired is None:
        desired = load_checked(directory, dict(variables), os.environ if environ is None else environ)
    store = (store or Store.default()).ensure()
    hosts = fleet_hosts(desired.fleet, bring_up_lab=bring_up_lab)
    built = build_services(desired, store, progress=progress)
    releases = []
    macs = {name: secrets_mac(store, service.deploy.read_secrets(environ))
            for name, service in desired.services.items() if service.deploy.secrets}
    for name in needs_order(desired.services):       # a store rolls out before the app that needs it
        service = desired.services[name]
        deploy = service.deploy.to_agent_json()
        image = built[name]
        releases.append(DesiredRelease(
            service=name, release=protocol.release_id(image.index_digest, deploy, macs.get(name)),
            index=image.index_digest, manifests=dict(image.manifests), deploy=deploy,
            host_names=tuple(h.name for h in select_hosts(service.deploy.hosts, hosts))))
    check_needs_placement(desired, releases)
    pyz, digest = agent_bundle(store)
    return Prepared(desired, store, releases, hosts, pyz, digest, macs)


def secrets_mac(store: Store, values: Mapping[str, bytes]) -> str:
    """HMAC-SHA256 of a service's secret values, keyed by this control machine's own random key
    (``$ORCH_HOME/keys/secrets.key``, 0600): it changes when a value changes, and without the key
    nobody can test a guessed value against it. Another control machine has another key, so its
    first apply replaces the containers of services with secrets once (copy the key to avoid it)."""
    import hashlib
    import hmac

    path = os.path.join(store.root, "keys", "secrets.key")
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(32))
    except FileExistsError:
        pass
    with open(path, "rb") as f:
        key = f.read()
    body = protocol.canonical_json({k: base64.b64encode(v).decode() for k, v in sorted(values.items())})
    return "hmac-sha256:" + hmac.new(key, body, hashlib.sha256).hexdigest()


def check_needs_placement(desired: Desired, releases: Sequence[DesiredRelease]) -> None:
    """Names reach services on the same host: a service needing another must only go where
    that other one runs too (ManifestError, located at its ``needs``)."""
    hosts_of = {r.service: set(r.host_names) for r in releases}
    for r in releases:
        for n in desired.services[r.service].deploy.needs:
            missing = sorted(hosts_of[r.service] - hosts_of.get(n, set()))
            if missing:
                svc = desired.services[r.service]
                raise ManifestError(f'needs "{n}", which does not run on {", ".join(missing)} '
                                    f"(services reach each other by name on the same host)",
                                    file=svc.file, line=svc.line,
                                    path=("services", svc.name, "deploy", "needs"),
                                    hint=f'select the same hosts for "{n}", or fewer for "{svc.name}"')


def agent_bundle(store: Store):
    """(path, digest) of the agent zipapp for this version of orch, kept beside the store."""
    from orchestrator.agent.bundle import build_agent_pyz

    pyz, digest = build_agent_pyz(os.path.join(store.root, "agent"))
    return str(pyz), digest


@mutable
class FleetAccess(Mutable):
    """The fleet of a manifests directory with the agent ready on each host (no image build)."""

    desired: Desired
    hosts: List[InventoryHost]
    pool: ConnectionPool
    agent_pyz: str
    agent_digest: str

    def clients(self, names: Optional[Sequence[str]] = None):
        """(clients by host, errors by host) for the named hosts (default: all), installing the
        agent where it is missing: for commands that change hosts."""
        hosts = [h for h in self.hosts if names is None or h.name in names]
        fan = fan_out(hosts, lambda h: install_agent_and_serve(self.pool.get(h.name), self.agent_pyz,
                                                               self.agent_digest),
                      max_parallel=MAX_PARALLEL_HOSTS)
        return fan.ok, fan.failed

    def views(self, names: Optional[Sequence[str]] = None):
        """(HostView by host, errors by host): what each agent says (info and status), changing
        nothing on any host: for plan, status, hosts, logs, audit."""
        hosts = [h for h in self.hosts if names is None or h.name in names]
        fan = fan_out(hosts, lambda h: read_host(self.pool.get(h.name), self.agent_digest),
                      max_parallel=MAX_PARALLEL_HOSTS)
        return fan.ok, fan.failed


def open_fleet(directory: str, variables: Mapping[str, str], pool: Optional[ConnectionPool] = None) -> FleetAccess:
    desired = load_desired(directory, dict(variables))
    hosts = fleet_hosts(desired.fleet)
    pyz, digest = agent_bundle(Store.default().ensure())
    pool = pool or ConnectionPool()
    for h in hosts:
        pool.add(h.target)
    return FleetAccess(desired, hosts, pool, pyz, digest)


def observe_request(prep: Prepared, blobs_of: Optional[Mapping[str, Sequence]] = None
                    ) -> Callable[[str], Dict[str, List[str]]]:
    """host name -> the ``observe`` request it is asked: which blobs of its platform's images
    it has (every platform's where its platform is not known yet)."""
    if blobs_of is None:
        blobs_of = {m: prep.store.blobs_for(m) for r in prep.releases for m in r.manifests.values()}
    by_platform: Dict[str, List[str]] = {}
    for rel in prep.releases:
        for platform, manifest in rel.manifests.items():
            by_platform.setdefault(platform, []).extend(d for d, _ in blobs_of[manifest])
    every = sorted({d for ds in by_platform.values() for d in ds})
    platform_of = {h.name: h.platform or "" for h in prep.hosts}

    def ask(host: str) -> Dict[str, List[str]]:
        return {"digests": sorted(set(by_platform.get(platform_of.get(host, ""), []))) or every}
    return ask


def observe(prep: Prepared, pool: ConnectionPool, *, install: bool = True,
            allow_downgrade: bool = False, again: Optional[Mapping[str, AgentClient]] = None,
            seen_under_lock: Optional[Mapping[str, dict]] = None) -> Observed:
    """Ask every host what it has and runs; with ``install`` (apply), install or upgrade the
    agent first where needed. Without (plan), nothing changes on any host and each host's plan
    says what apply would do to its agent. A first observe for apply may be answered by serve's
    snapshot (no agent process); `again`, the clients of an earlier observe, re-reads fresh
    through their agent sessions (under the lock), or takes what a host answered when its lock
    was taken (``seen_under_lock``, see fleet/lock.py: the same read, one round trip less)."""
    hosts = list(prep.hosts)    # every host: one that no service selects any more may hold one to remove
    blobs_of = {m: prep.store.blobs_for(m) for r in prep.releases for m in r.manifests.values()}
    ask = observe_request(prep, blobs_of)
    clients: Dict[str, AgentClient] = {}

    def one(host: InventoryHost) -> HostFacts:
        wanted = ask(host.name)["digests"]
        conn, agent = pool.get(host.name), None
        known = (again or {}).get(host.name)
        if known is not None and (seen_under_lock or {}).get(host.name) is not None:
            client, seen = known, seen_under_lock[host.name]     # the lock's own answer
        elif known is not None and known.session is not None and not known.session.closed:
            client, seen = known, known.call("observe", {"digests": wanted}, timeout=120)
        elif install:
            client, seen = install_and_observe(
                conn, prep.agent_pyz, prep.agent_digest, wanted, allow_downgrade=allow_downgrade,
                releases=None if again is not None else
                {r.service: r.release for r in prep.releases if host.name in r.host_names})
        else:
            view: HostView = read_host(conn, prep.agent_digest, wanted)
            client, seen, agent = view.client, view.answer, view.would_install(prep.agent_digest)
            if seen is None:        # no agent at all: nothing of orch's is there
                return HostFacts(host.name, host.platform or view.platform, agent=agent)
        clients[host.name] = client
        platform = host.platform or seen["info"]["platform"]
        have, status = seen["have"], seen["status"]
        services = status.get("services") or {}
        releases = {name: s.get("release") for name, s in services.items()
                    if s.get("release") and s.get("state") == "running" and not s.get("restarts")
                    and s.get("health") != "unhealthy"}         # ok means serving
        projects = {name: s["project"] for name, s in services.items() if s.get("project")}
        return HostFacts(host.name, platform, frozenset(have.get("present", [])),
                         dict(have.get("partial", {})), releases, projects=projects, agent=agent)

    fan = fan_out(hosts, one, max_parallel=MAX_PARALLEL_HOSTS)
    facts = dict(fan.ok)
    for name, err in fan.failed.items():
        facts[name] = HostFacts(name, error=str(err))
    strategies = {}
    for rel in prep.releases:
        s = prep.desired.services[rel.service].deploy.strategy
        strategies[rel.service] = (s.canary, s.wave_size(len(rel.host_names)))
    return Observed(facts, clients, plan_fleet(prep.releases, facts, blobs_of, strategies,
                                               project=prep.desired.fleet.owner))


# ---- apply --------------------------------------------------------------------------------
def apply(prep: Prepared, obs: Observed, pool: ConnectionPool, *, who: Optional[str] = None,
          environ: Optional[Mapping[str, str]] = None, on_bytes: Optional[Callable[[str, int], None]] = None,
          on_event: Optional[Callable[[str], None]] = None, force_unlock: bool = False,
          host_timeout: float = HOST_TIMEOUT, allow_downgrade: bool = False) -> ApplyReport:
    """Lock the fleet, observe again under the lock (a plan made before it may be stale), ship
    and roll out; the lock is released on every way out. Every call to a host has a deadline
    (``apply_deadline``); a host that passes it is dropped, reported, and not called again."""
    if obs.plan.up_to_date and not force_unlock:
        report = ApplyReport(obs.plan)
        names = [r.service for r in prep.releases]
        report.final = {h: {n: f.releases.get(n) for n in names} for h, f in obs.facts.items()}
        return report
    who = who or operator()
    with mutating(_fleet_clients(prep, obs, pool), who, force=force_unlock, timeout=host_timeout,
                  observe=observe_request(prep)) as lock:
        obs = observe(prep, pool, allow_downgrade=allow_downgrade, again=obs.clients,
                      seen_under_lock=lock.observed)
        # a host that answers now but did not when the lock was taken: lock it too, or leave
        # it alone (an apply there would be refused: its lock is not this session's)
        late = {h: c for h, c in obs.clients.items()
                if h not in lock.clients and h not in lock.lost and not obs.facts[h].error}
        if late:
            lock.add(late)
        report = ApplyReport(obs.plan)
        report.lost.update({h: str(e) for h, e in lock.lost.items()})
        if not obs.plan.up_to_date:
            try:
                _apply_locked(prep, obs, pool, lock, report, who, environ, on_bytes, on_event, host_timeout)
            finally:
                gone = set(lock.lost) | {o.host for o in (report.rollout.outcomes if report.rollout else ())
                                         if o.unreachable}
                report.lost.update({h: str(lock.lost.get(h) or "stopped answering") for h in gone})
                lock.forget(gone)                 # silent: no unlock sent, its lease runs out
    report.final = final_releases(prep, {h: c for h, c in obs.clients.items() if h not in report.lost},
                                  unreachable=report.lost, timeout=host_timeout,
                                  known=lock.last_status)
    return report


def _fleet_clients(prep: Prepared, obs: Observed, pool: ConnectionPool) -> Dict[str, AgentClient]:
    """Every reachable host of the fleet, not only those this change touches: all commands on
    one fleet then meet at the same first host when they take the lock."""
    out = {h: c for h, c in obs.clients.items() if not obs.facts[h].error}
    others = [h for h in prep.hosts if h.name not in obs.facts]
    fan = fan_out(others, lambda h: install_agent_and_serve(pool.get(h.name), prep.agent_pyz, prep.agent_digest),
                  max_parallel=MAX_PARALLEL_HOSTS)
    out.update(fan.ok)
    return out


def _apply_locked(prep: Prepared, obs: Observed, pool: ConnectionPool, lock: FleetLock,
                  report: ApplyReport, who: str, environ, on_bytes, on_event, host_timeout: float) -> None:
    secrets = {name: {k: base64.b64encode(v).decode() for k, v in
                      prep.desired.services[name].deploy.read_secrets(environ).items()}
               for name in prep.desired.services}
    releases = {r.service: r for r in prep.releases}
    manifests = {(c.service, hp.host): c.manifest for hp in obs.plan.hosts for c in hp.changes}

    def body(host: str, service: str) -> dict:
        """What a host is asked to run of one service (``apply`` and ``prepare`` alike)."""
        rel = releases[service]
        b = {"release": rel.release, "index": rel.index, "manifest": manifests[(service, host)],
             "deploy": rel.deploy, "secrets": secrets[service], "project": prep.desired.fleet.owner}
        if service in prep.secret_macs:
            b["secrets_mac"] = prep.secret_macs[service]
        return b

    def prepare_one(host: str, services: Sequence[str]) -> None:
        deadline = max(apply_deadline(releases[s].deploy, host_timeout) for s in services)
        obs.clients[host].prepare({s: body(host, s) for s in services}, lock=lock.token,
                                  timeout=deadline)

    shipping = Shipping(prep, obs, pool, report, on_bytes, prepare_one)
    try:
        _roll_out(prep, obs, lock, report, who, on_event, host_timeout, body, shipping)
    finally:
        shipping.finish()


def later_waves(plan) -> Dict[str, List[str]]:
    """host -> the services it changes in a wave after that service's first: what ``prepare``
    can make on it while the first waves (the canaries) run. A host in any service's first
    wave is left out: its canary's apply would wait for that preparation."""
    first: Dict[str, object] = {}
    out: Dict[str, List[str]] = {}
    for w in plan.waves:
        if first.setdefault(w.service, w) is w:
            continue
        for h in w.hosts:
            out.setdefault(h, []).append(w.service)
    busy = {h for w in first.values() for h in w.hosts}
    return {h: services for h, services in out.items() if h not in busy}


def _roll_out(prep: Prepared, obs: Observed, lock: FleetLock, report: ApplyReport, who: str,
              on_event, host_timeout: float, body, shipping: "Shipping") -> None:
    plan = obs.plan
    releases = {r.service: r for r in prep.releases}

    def apply_one(host: str, service: str) -> dict:
        rel = releases[service]
        return obs.clients[host].apply({service: body(host, service)}, who, lock=lock.token,
                                       timeout=apply_deadline(rel.deploy, host_timeout))

    def revert_one(host: str, service: str, old: Optional[str]) -> None:
        obs.clients[host].rollback(service, old, who=who, lock=lock.token,
                                   timeout=apply_deadline(releases[service].deploy, host_timeout))

    policies = {name: ServicePolicy(s.deploy.strategy.on_failure, MAX_PARALLEL_HOSTS)
                for name, s in prep.desired.services.items()}
    dropped = list(plan.failed_hosts) + list(report.ship_failed) + list(report.lost)

    def on_wave(w) -> None:
        lock.refresh(REFRESH_EVERY)               # a long rollout keeps its lease
        if on_event:
            on_event(f"{w.service}: {'canary' if w.canary else 'wave ' + str(w.number)} -> {', '.join(w.hosts)}")

    def on_outcome(o) -> None:
        if not o.ok:
            shipping.stop_preparing()          # its later waves may not run: prepare no more
        if on_event:
            on_event(f"{o.host}: {o.service} {'ok ' + (o.release or '') if o.ok else 'FAILED: ' + str(o.error)}")

    report.rollout = run_rollout(
        plan, policies, apply_one, revert_one, dropped=dropped, on_wave=on_wave, ready=shipping.ready,
        on_outcome=on_outcome)
    if not report.rollout.halted:
        _remove_dropped(plan, obs, lock, report, who, on_event)


def _remove_dropped(plan, obs: Observed, lock: FleetLock, report: ApplyReport, who: str, on_event) -> None:
    """Services this project dropped from the manifests leave their hosts, once the rollout of
    what stays has succeeded (a renamed service serves under its new name first)."""
    todo = [(hp.host, r.service) for hp in plan.hosts if not hp.error and hp.host not in report.lost
            for r in hp.removals]

    def one(item):
        host, service = item
        obs.clients[host].remove(service, who, lock=lock.token)
        if on_event:
            on_event(f"{host}: {service} removed (no longer in the manifests)")
        return service

    fan = fan_out(todo, one, name=lambda item: f"{item[0]}/{item[1]}", max_parallel=MAX_PARALLEL_HOSTS)
    for key in fan.ok:
        host, service = key.split("/", 1)
        report.removed.setdefault(host, []).append(service)
    report.remove_failed.update({k: str(e) for k, e in fan.failed.items()})


class Shipping:
    """Blobs go to every host of the rollout while it runs (pipelined): the first wave's hosts
    (the canary) first, then all the others at once while the canary is applied and settles.
    Each of those then prepares its later waves' containers (``prepare_one``: unpacked, wired,
    created, not started), so its own wave only starts them. A wave waits only for its own
    hosts (``ready``); neither step changes what serves, so a failing canary still leaves
    every other host's release untouched (what was prepared goes with the lock)."""

    def __init__(self, prep: Prepared, obs: Observed, pool: ConnectionPool, report: ApplyReport,
                 on_bytes, prepare_one: Optional[Callable[[str, Sequence[str]], None]] = None) -> None:
        from concurrent.futures import ThreadPoolExecutor, wait

        later = later_waves(obs.plan) if prepare_one is not None else {}
        self._preparing = threading.Event()           # cleared: no more preparations
        self._preparing.set()
        todo = {hp.host: hp for hp in obs.plan.hosts
                if (hp.blobs or hp.host in later) and not hp.error}
        from orchestrator.transport.wire import wire_job    # the fleet's link: recipes, a bandwidth cap
        wire = wire_job(prep.store, prep.desired.fleet,
                        {m: p for r in prep.releases for p, m in r.manifests.items()}) \
            if any(hp.blobs for hp in todo.values()) else None
        first = [h for h in (obs.plan.waves[0].hosts if obs.plan.waves else ()) if h in todo]
        self.report = report
        self.futures: Dict[str, object] = {}
        self._pool = ThreadPoolExecutor(max_workers=max(1, min(MAX_PARALLEL_HOSTS, len(todo))))

        def one(hp, after=()):
            wait(after)
            shipped = None
            if hp.blobs:
                connect = reconnecting_client(pool, hp.host, obs.clients[hp.host].path,
                                              first=obs.clients[hp.host])
                shipped = ship_blobs(connect, hp.blobs, prep.store.open_blob, partial=dict(hp.resume),
                                     on_bytes=(lambda n: on_bytes(hp.host, n)) if on_bytes else None,
                                     wire=wire)
            if hp.host in later and self._preparing.is_set() and hp.host not in report.lost:
                try:
                    prepare_one(hp.host, later[hp.host])
                except Exception:  # noqa: BLE001 - best effort: its apply makes the container
                    pass
            return shipped

        for h in first:
            self.futures[h] = self._pool.submit(one, todo[h])
        canary = list(self.futures.values())
        for h, hp in todo.items():
            if h not in self.futures:
                self.futures[h] = self._pool.submit(one, hp, canary)

    def ready(self, host: str) -> bool:
        """Wait for the host's blobs: True once they are there (or none were needed)."""
        future = self.futures.get(host)
        if future is None:
            return host not in self.report.ship_failed
        try:
            shipped = future.result()
            if shipped is not None:
                self.report.shipped[host] = shipped
            return True
        except Exception as exc:  # noqa: BLE001 - reported per host, as fan_out does
            self.report.ship_failed[host] = str(exc) if isinstance(exc, OrchError) else \
                f"{host}: {type(exc).__name__}: {exc}"
            return False

    def stop_preparing(self) -> None:
        """A wave failed (its later waves may never run), or the rollout is over: no host not
        yet prepared is prepared any more."""
        self._preparing.clear()

    def finish(self) -> None:
        """Every shipment ended (and reported), also those of waves that never ran."""
        self.stop_preparing()
        for host in list(self.futures):
            self.ready(host)
        self._pool.shutdown()


def final_releases(prep: Prepared, clients: Mapping[str, AgentClient], *, unreachable: Sequence[str] = (),
                   timeout: float = HOST_TIMEOUT, known: Optional[Mapping[str, dict]] = None
                   ) -> Dict[str, Dict[str, Optional[str]]]:
    """What each host runs now (``known``: statuses already read, e.g. as the lock went)."""
    names = [r.service for r in prep.releases]
    known = known or {}
    fan = fan_out(list(clients.items()),
                  lambda kv: known[kv[0]] if kv[0] in known else kv[1].status(timeout=timeout),
                  name=lambda kv: kv[0], max_parallel=MAX_PARALLEL_HOSTS)
    out: Dict[str, Dict[str, Optional[str]]] = {h: {n: "unreachable" for n in names} for h in unreachable}
    for host in clients:
        if host in fan.ok:
            services = fan.ok[host].get("services") or {}
            out[host] = {n: (services.get(n) or {}).get("release") for n in names}
        else:
            out[host] = {n: "unreachable" for n in names}
    return out
