"""Pure fleet planning: desired releases x what each host reported -> per-host changes and waves.

No I/O, no clock: everything the planner needs is passed in, so it is tested with plain data.
"""
from __future__ import annotations

from dataclasses import field, replace
from typing import Dict, List, Mapping, Optional, Sequence, Tuple
from runtime.records import Record, record


@record
class DesiredRelease(Record):
    """One service as it should run on hosts of one fleet."""

    service: str
    release: str                                   # protocol.release_id(index, deploy)
    index: str                                     # image index digest
    manifests: Mapping[str, str]                   # platform -> image manifest digest
    deploy: Mapping                                # the agent deploy spec JSON
    host_names: Tuple[str, ...]                    # hosts this service selects, in fleet order


@record
class HostFacts(Record):
    """What one host reported (or why it could not)."""

    name: str
    platform: Optional[str] = None
    present: frozenset = frozenset()               # blob digests the host has
    partial: Mapping[str, int] = field(default_factory=dict)
    releases: Mapping[str, str] = field(default_factory=dict)   # service -> running release
    error: Optional[str] = None                    # unreachable, missing python3, ...
    projects: Mapping[str, str] = field(default_factory=dict)   # service -> project that deployed it
    agent: Optional[str] = None                    # what apply would do to the agent (plan only)


@record
class Change(Record):
    service: str
    old_release: Optional[str]
    new_release: str
    manifest: str
    stop_first: str = ""                           # why the replace stops the old slot first


@record
class Removal(Record):
    service: str
    release: Optional[str]


@record
class HostPlan(Record):
    host: str
    platform: Optional[str]
    changes: Tuple[Change, ...] = ()
    blobs: Tuple[Tuple[str, int], ...] = ()        # (digest, size) the host lacks, manifest first
    resume: Mapping[str, int] = field(default_factory=dict)   # digest -> bytes already there
    error: Optional[str] = None
    removals: Tuple["Removal", ...] = ()           # this project's services the manifests dropped here
    agent: Optional[str] = None                    # what apply would do to the agent, if anything

    @property
    def bytes_to_send(self) -> int:
        return sum(size - self.resume.get(d, 0) for d, size in self.blobs)

    @property
    def up_to_date(self) -> bool:
        return not self.changes and not self.removals and self.error is None and self.agent is None


@record
class Wave(Record):
    service: str
    number: int                                    # 0 is the canary wave when canary > 0
    canary: bool
    hosts: Tuple[str, ...]


@record
class FleetPlan(Record):
    hosts: Tuple[HostPlan, ...]
    waves: Tuple[Wave, ...]

    @property
    def up_to_date(self) -> bool:
        return all(h.up_to_date for h in self.hosts)

    def host(self, name: str) -> HostPlan:
        return next(h for h in self.hosts if h.host == name)

    @property
    def failed_hosts(self) -> Tuple[str, ...]:
        return tuple(h.host for h in self.hosts if h.error)


class PlanError(ValueError):
    pass


def plan_fleet(releases: Sequence[DesiredRelease], facts: Mapping[str, HostFacts],
               blobs_of: Mapping[str, Sequence[Tuple[str, int]]],
               strategies: Mapping[str, Tuple[int, int]], project: Optional[str] = None) -> FleetPlan:
    """Plan every host and every service's waves.

    `blobs_of[manifest_digest]` lists (digest, size) of manifest, config and layers;
    `strategies[service] = (canary, wave_size)`. With `project`, a service that project
    deployed on a host and that the manifests no longer put there is planned for removal;
    services of other projects (or of none recorded) are never touched.
    """
    host_order: List[str] = []
    for rel in releases:
        for name in rel.host_names:
            if name not in host_order:
                host_order.append(name)
    if project:   # hosts no release selects any more may still run what this project dropped
        host_order += [n for n in facts if n not in host_order and not facts[n].error]

    plans = []
    for name in host_order:
        hp = _plan_host(name, facts.get(name, HostFacts(name, error="not observed")), releases, blobs_of)
        if project and not hp.error:
            hp = replace(hp, removals=plan_removals(name, facts[name], releases, project))
        plans.append(hp)

    changing = {(c.service, p.host) for p in plans for c in p.changes}
    waves: List[Wave] = []
    for rel in releases:
        canary, size = strategies.get(rel.service, (0, 1))
        targets = [h for h in rel.host_names if (rel.service, h) in changing]
        waves.extend(plan_waves(rel.service, targets, canary, size))
    return FleetPlan(tuple(plans), tuple(waves))


def _plan_host(name: str, facts: HostFacts, releases: Sequence[DesiredRelease],
               blobs_of: Mapping[str, Sequence[Tuple[str, int]]]) -> HostPlan:
    if facts.error:
        return HostPlan(name, facts.platform, error=facts.error)
    changes: List[Change] = []
    needed: Dict[str, int] = {}
    for rel in releases:
        if name not in rel.host_names:
            continue
        manifest = rel.manifests.get(facts.platform or "")
        if manifest is None:
            built = ", ".join(sorted(rel.manifests)) or "none"
            return HostPlan(name, facts.platform, error=f"service {rel.service} is not built for "
                            f"{facts.platform} (built: {built}); add it to image.platforms")
        current = facts.releases.get(rel.service)
        if current == rel.release:
            continue
        changes.append(Change(rel.service, current, rel.release, manifest,
                              one_slot(rel.deploy) if current else ""))
        for digest, size in blobs_of[manifest]:
            if digest not in facts.present:
                needed.setdefault(digest, size)
    resume = {d: facts.partial[d] for d in needed if 0 < facts.partial.get(d, 0) <= needed[d]}
    return HostPlan(name, facts.platform, tuple(changes), tuple(needed.items()), resume, agent=facts.agent)


def one_slot(deploy: Mapping) -> str:
    """Why a replace of this deploy spec stops the old container first ("" for blue/green)."""
    from runtime.spec import SpecError, Deploy
    try:
        return Deploy.from_json(deploy).one_slot
    except SpecError:
        return ""


def plan_removals(host: str, facts: HostFacts, releases: Sequence[DesiredRelease],
                  project: str) -> Tuple[Removal, ...]:
    """The services `project` deployed on `host` that no desired release puts there any more."""
    wanted = {r.service for r in releases if host in r.host_names}
    return tuple(Removal(s, facts.releases.get(s)) for s, p in sorted(facts.projects.items())
                 if p == project and s not in wanted)


def plan_waves(service: str, hosts: Sequence[str], canary: int, wave_size: int) -> List[Wave]:
    """Canary hosts first (their own wave), then waves of `wave_size`."""
    if wave_size < 1:
        raise PlanError("wave size must be at least 1")
    waves: List[Wave] = []
    rest = list(hosts)
    if canary > 0 and rest:
        waves.append(Wave(service, 0, True, tuple(rest[:canary])))
        rest = rest[canary:]
    while rest:
        waves.append(Wave(service, len(waves), False, tuple(rest[:wave_size])))
        rest = rest[wave_size:]
    return waves

