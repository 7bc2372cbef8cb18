"""The validated desired state: frozen dataclasses, the only thing other layers see.

Mappings are read-only ``MappingProxyType``; sequences are tuples.
``DeploySpec.agent_spec()`` builds the agent deploy spec (``runtime/spec.py``: its shape,
defaults and validation live there, shared with the agent).
"""
from __future__ import annotations

import math
import os
from dataclasses import field
from types import MappingProxyType
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from orchestrator.errors import ManifestError
from orchestrator.lab import layout as _lab
from runtime import spec
from runtime.records import Record, record

EMPTY: Mapping[str, str] = MappingProxyType({})


def frozen_map(d: Optional[Mapping]) -> Mapping:
    return MappingProxyType(dict(d or {}))


# ---------------------------------------------------------------- fleet

# The embedded lab fleet is the lab's own spec (orchestrator/lab/layout.py): one type, one
# set of limits, checked when the manifest is loaded. Its name is the fleet's.
LabSpec = _lab.LabSpec


@record
class FleetHost(Record):
    name: str
    address: str
    user: str = "root"
    port: int = 22
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    platform: Optional[str] = None      # None: ask the agent (info) at apply time


@record
class Fleet(Record):
    name: str
    lab: Optional[LabSpec] = None       # exactly one of lab / hosts is set
    hosts: Tuple[FleetHost, ...] = ()
    file: Optional[str] = None
    line: Optional[int] = None
    project: Optional[str] = None       # who owns what it deploys (default: the fleet's name)
    bandwidth: Optional[str] = None     # a cap on what a deploy sends, all hosts together ("1mbit")
    wire: str = "auto"                  # layers on the link: auto | xz (recipes) | gzip (blobs)

    @property
    def is_lab(self) -> bool:
        return self.lab is not None

    @property
    def owner(self) -> str:
        """The project recorded with every service this fleet deploys: an apply removes only
        services of its own project that the manifests dropped."""
        return self.project or self.name


DEFAULT_FLEET = Fleet(name="lab", lab=LabSpec(name="lab", amd64=2, arm64=1, armv7=0))


# ---------------------------------------------------------------- image

@record
class ScratchBase(Record):
    kind: str = "scratch"


@record
class DebianBase(Record):
    suite: str
    packages: Tuple[str, ...] = ()
    kind: str = "debian"
    variant: str = "extract"      # or "minbase" (Dockerfile FROM debian:SUITE: maintainer scripts run)
    slim: bool = False            # minbase without docs, man pages and locales (debian:SUITE-slim)


@record
class OciBase(Record):
    dir: str                      # absolute path of an OCI image layout
    tag: Optional[str] = None     # org.opencontainers.image.ref.name; None: the only entry
    kind: str = "oci"


@record
class RegistryBase(Record):
    ref: str                      # e.g. 127.0.0.1:5000/library/busybox:1.36 or ...@sha256:...
    insecure: bool = False        # plain http (always used for loopback registries)
    kind: str = "registry"


@record
class StageBase(Record):
    stage: str                    # an earlier Dockerfile stage (FROM build AS final)
    kind: str = "stage"


Base = Union[ScratchBase, DebianBase, OciBase, RegistryBase, StageBase]


@record
class CopyStep(Record):
    src: str                      # as written in the manifest (relative to the manifest's directory)
    path: str                     # absolute source path on this machine (checked: inside the directory)
    dest: str                     # absolute path in the image
    mode: Optional[int] = None    # permission bits for copied files (dirs keep 0755)
    owner: Optional[Tuple[int, int]] = None
    kind: str = "copy"


@record
class TemplateStep(Record):
    src: str
    path: str
    dest: str
    content: bytes = b""          # rendered at load time (Jinja2, StrictUndefined)
    mode: Optional[int] = None
    owner: Optional[Tuple[int, int]] = None
    kind: str = "template"


@record
class RunStep(Record):
    command: Tuple[str, ...]      # argv; a string in the manifest becomes ["/bin/sh", "-c", s]
    env: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    kind: str = "run"
    workdir: Optional[str] = None  # Dockerfile RUN: its WORKDIR, USER and exactly the ENV/ARG set above it
    user: Optional[str] = None
    env_only: bool = False
    label: str = ""


@record
class ContextCopyStep(Record):
    """Dockerfile COPY/ADD from the build context, resolved at load time (.dockerignore applied)."""

    label: str                                  # "Dockerfile:7 COPY app/ /srv/"
    files: Tuple[Tuple[str, str, str], ...]     # (file | dir | symlink, path in the image, source path | link)
    owner: Optional[str] = None                 # --chown user[:group], names resolved in the image
    mode: Optional[int] = None                  # --chmod
    kind: str = "context"


@record
class StageCopyStep(Record):
    """Dockerfile COPY --from=STAGE: paths (globs allowed) of an earlier stage's filesystem."""

    label: str
    stage: str
    sources: Tuple[str, ...]
    dest: str                                   # ends with "/" when it names a directory
    owner: Optional[str] = None
    mode: Optional[int] = None
    kind: str = "stage-copy"


@record
class MkdirStep(Record):
    label: str
    path: str                                   # Dockerfile WORKDIR: made when missing
    kind: str = "mkdir"


Step = Union[CopyStep, TemplateStep, RunStep, ContextCopyStep, StageCopyStep, MkdirStep]


@record
class ImageConfig(Record):
    env: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    entrypoint: Optional[Tuple[str, ...]] = None
    cmd: Optional[Tuple[str, ...]] = None
    workdir: Optional[str] = None
    user: Optional[str] = None
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    expose: Tuple[str, ...] = ()          # "80/tcp"
    stop_signal: Optional[str] = None


@record
class Stage(Record):
    """One Dockerfile stage for one platform: a base, its steps and its image config."""

    name: str
    base: Base
    steps: Tuple[Step, ...]
    config: ImageConfig
    platform: str                               # FROM --platform may differ from the image's


@record
class DockerfileSpec(Record):
    path: str                                   # as shown in errors
    stages: Mapping[str, Tuple[Stage, ...]]     # {platform: stages in build order}; the last is the image


@record
class ImageSpec(Record):
    base: Base
    platforms: Tuple[str, ...]
    steps: Tuple[Step, ...] = ()
    config: ImageConfig = ImageConfig()
    dockerfile: Optional[DockerfileSpec] = None   # image: {dockerfile: ...}; base/steps/config are its image stage
    health: Optional["HealthCheck"] = None        # from a Dockerfile HEALTHCHECK (the deploy's unless it sets one)


# ---------------------------------------------------------------- deploy

@record
class HostSelector(Record):
    kind: str = "all"                     # all | names | labels
    names: Tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY)

    def matches(self, name: str, labels: Mapping[str, str]) -> bool:
        if self.kind == "all":
            return True
        if self.kind == "names":
            return name in self.names
        return all(labels.get(k) == v for k, v in self.labels.items())


# The agent's own types (runtime/spec.py): one home for their shape, defaults and checks.
Port = spec.Port
HealthCheck = spec.Health
Volume = spec.Volume
Resources = spec.Resources


@record
class Secret(Record):
    """Where a secret's value comes from; the value itself is read only at apply time."""

    name: str
    dest: str
    env: Optional[str] = None             # environment variable on the control machine
    file: Optional[str] = None            # absolute path of a file on the control machine
    tmpfs: bool = False                   # memory only on the host (gone after a power cut)
    source_file: Optional[str] = None
    source_line: Optional[int] = None

    def read_value(self, environ: Optional[Mapping[str, str]] = None) -> bytes:
        """The secret's bytes (never logged). Raises ManifestError, located, when missing."""
        where = dict(file=self.source_file, line=self.source_line, path=("secrets", self.name))
        if self.env is not None:
            env = os.environ if environ is None else environ
            if self.env not in env:
                raise ManifestError(f"environment variable {self.env} is not set", **where)
            return env[self.env].encode()
        try:
            with open(self.file, "rb") as fh:
                return fh.read()
        except OSError as exc:
            raise ManifestError(f'cannot read secret file "{self.file}": {exc.strerror}', **where) from None


@record
class Strategy(Record):
    canary: int = 0                       # hosts in the first wave (0: no canary wave)
    max_parallel: Optional[int] = 1       # hosts per later wave, or ...
    max_parallel_percent: Optional[float] = None   # ... a percentage of the selected hosts
    monitor: float = 0.0                  # seconds a new release must stay healthy
    on_failure: str = "halt"              # halt | rollback

    def wave_size(self, total_hosts: int) -> int:
        """Hosts per wave after the canary wave (at least 1)."""
        if self.max_parallel_percent is not None:
            return max(1, math.floor(total_hosts * self.max_parallel_percent / 100.0))
        return max(1, self.max_parallel or 1)


@record
class DeploySpec(Record):
    hosts: HostSelector = HostSelector()
    ports: Tuple[Port, ...] = ()
    health: HealthCheck = HealthCheck()
    env: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    volumes: Tuple[Volume, ...] = ()
    secrets: Tuple[Secret, ...] = ()
    resources: Resources = Resources()
    drain: float = spec.Deploy.drain
    stop_timeout: float = spec.Deploy.stop_timeout
    stop_first: bool = spec.Deploy.stop_first
    keep_releases: int = spec.Deploy.keep_releases
    strategy: Strategy = Strategy()
    init: bool = spec.Deploy.init
    needs: Tuple[str, ...] = ()           # services this one reaches by name; they roll out first
    stateful: bool = False                # databases and the like: stop-first, longer stop timeout
    pre_stop: Tuple[str, ...] = ()        # run in the container before it is stopped
    userns: bool = spec.Deploy.userns
    network: str = spec.Deploy.network    # bridge | host (the host's own network stack)

    def agent_spec(self) -> spec.Deploy:
        """The agent's deploy spec, validated as the agent validates it (``SpecError`` names
        the key path); no secret values, no strategy or hosts except ``monitor``, which the
        agent needs to know when a release counts as good."""
        return spec.Deploy(
            ports=self.ports, health=self.health, env=tuple(sorted(self.env.items())),
            volumes=self.volumes,
            secrets=tuple(spec.SecretMount(s.name, s.dest, s.tmpfs) for s in self.secrets),
            resources=self.resources, drain=self.drain, monitor=self.strategy.monitor,
            stop_timeout=self.stop_timeout, stop_first=self.stop_first,
            keep_releases=self.keep_releases, init=self.init, needs=self.needs,
            stateful=self.stateful, pre_stop=self.pre_stop,
            userns=self.userns, network=self.network)

    def to_agent_json(self) -> Dict[str, Any]:
        """The JSON the release id is computed over and the agent receives."""
        return self.agent_spec().to_json()

    def read_secrets(self, environ: Optional[Mapping[str, str]] = None) -> Dict[str, bytes]:
        """{name: value} for the apply request (values go beside the spec, never in it)."""
        return {s.name: s.read_value(environ) for s in self.secrets}


# ---------------------------------------------------------------- top level

@record
class Service(Record):
    name: str
    image: ImageSpec
    deploy: DeploySpec
    file: str                             # manifest file as displayed in errors
    line: int
    directory: str                        # absolute directory of the manifest file (copy sources)
    push: Optional[str] = None            # REGISTRY/REPO[:TAG] that `orch push SERVICE` sends the image to


@record
class Desired(Record):
    directory: str                        # absolute manifests directory (lock file lives here)
    fleet: Fleet
    services: Mapping[str, Service]       # in file order
    vars: Mapping[str, Any] = field(default_factory=lambda: EMPTY)

    @property
    def lock_path(self) -> str:
        return os.path.join(self.directory, "orch.lock")
