"""The deploy spec: one typed home for its shape, its defaults and its validation.

The orchestrator's manifest model builds a ``Deploy`` (so ``orch plan`` refuses, located, what
the agent would refuse); the agent parses the JSON it receives once (``Deploy.from_json``) and
every agent module reads the dataclass. ``to_json`` renders the exact JSON the release id is
computed over, so its keys and values must not change without a new release id everywhere.

Stdlib only, Python 3.9+ (imported by both sides).
"""
from __future__ import annotations

import math
import re
from dataclasses import field
from typing import Any, Dict, Mapping, Optional, Tuple

from runtime.errors import BadRequest
from runtime.records import Record, record

SERVICE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")   # container ids, cgroups, veths
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")    # volumes and secrets
HEALTH_KINDS = ("http", "tcp", "exec", "none")
PROTOCOLS = ("tcp", "udp")
NETWORKS = ("bridge", "host")    # bridge: own namespace, veth, DNAT; host: the host's own stack
MAX_SECONDS = 3600.0
MIN_MEMORY = 6 << 20          # below this the kernel (and runc) refuse the cgroup limit
MAX_CPUS = 1024.0
MAX_KEEP = 100
MIN_SETTLE = 3.0      # seconds a container without a health check must have run before apply calls it serving
# Mount points a volume or secret may not cover: kernel filesystems the bundle mounts itself
# (a volume on /proc/sys would make the host's sysctls writable), and the root.
KERNEL_DIRS = ("/proc", "/sys", "/dev")


class SpecError(BadRequest):
    """A deploy spec the agent refuses. ``path`` is the key path inside the deploy spec
    (``("resources", "cpus")``), ``reason`` the text after the location."""

    def __init__(self, path: Tuple[Any, ...], reason: str):
        super().__init__("/".join(str(p) for p in path) + ": " + reason if path else reason)
        self.path = tuple(path)
        self.reason = reason

    def under(self, prefix: str) -> BadRequest:
        """The same refusal with its location spelled from the request's root."""
        where = "/".join([prefix] + [str(p) for p in self.path])
        return BadRequest(f"{where}: {self.reason}")


def check_service_name(name: Any) -> str:
    if not isinstance(name, str) or not SERVICE_NAME_RE.match(name):
        raise SpecError((), f"expected a service name of a-z, 0-9 and '-' (at most 40 "
                            f"characters, starting with a letter or digit), got {name!r}")
    return name


@record
class Port(Record):
    host: int
    container: int
    protocol: str = "tcp"


@record
class Health(Record):
    kind: str = "none"                    # http | tcp | exec | none
    path: Optional[str] = None            # http only
    port: Optional[int] = None            # http and tcp
    command: Tuple[str, ...] = ()         # exec only
    interval: float = 1.0
    timeout: float = 1.0
    retries: int = 3
    start_period: float = 0.0


@record
class Volume(Record):
    name: str
    dest: str
    readonly: bool = False
    shared: bool = False                  # one directory for every service naming it (volumes.py)


@record
class SecretMount(Record):
    name: str
    dest: str
    tmpfs: bool = False                   # memory only: not kept on disk, gone after a power cut


@record
class Resources(Record):
    memory: Optional[int] = None          # bytes
    pids: Optional[int] = None
    cpus: Optional[float] = None


@record
class Deploy(Record):
    ports: Tuple[Port, ...] = ()
    health: Health = Health()
    env: Tuple[Tuple[str, str], ...] = ()          # sorted (name, value)
    volumes: Tuple[Volume, ...] = ()
    secrets: Tuple[SecretMount, ...] = ()
    resources: Resources = Resources()
    drain: float = 2.0                    # seconds the old slot keeps its connections
    monitor: float = 0.0                  # seconds a new release must stay healthy
    stop_timeout: float = 10.0
    stop_first: bool = False
    keep_releases: int = 3
    command: Optional[Tuple[str, ...]] = None      # overrides the image's Entrypoint + Cmd
    init: bool = True                     # the host's static tini/catatonit as PID 1 (pid1.py)
    needs: Tuple[str, ...] = ()           # services this one reaches by name (names.py)
    stateful: bool = False                # one slot at a time: the old one stops before the new starts
    pre_stop: Tuple[str, ...] = ()        # run in the container before it is stopped
    userns: bool = False                  # root in the container is an unprivileged uid outside
    network: str = "bridge"               # or "host": the host's network namespace (NETWORKS)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def env_map(self) -> Dict[str, str]:
        return dict(self.env)

    @property
    def host_network(self) -> bool:
        return self.network == "host"

    @property
    def one_slot(self) -> str:
        """Why a release replaces this service stop-first (its old slot stops before the new
        one starts), or "" when it is blue/green. ``stop_first`` alone is not a reason: it
        only allows stop-first where a second slot does not fit."""
        if self.host_network:
            return "network: host, two slots cannot share the host's ports"
        if self.stateful:
            return "stateful, one slot at a time"
        return ""

    def to_json(self) -> Dict[str, Any]:
        h, r = self.health, self.resources
        out: Dict[str, Any] = {
            "ports": [{"host": p.host, "container": p.container, "protocol": p.protocol}
                      for p in self.ports],
            "health": {"kind": h.kind, "path": h.path, "port": h.port, "command": list(h.command),
                       "interval": h.interval, "timeout": h.timeout, "retries": h.retries,
                       "start_period": h.start_period},
            "env": dict(self.env),
            "volumes": [dict({"name": v.name, "dest": v.dest, "readonly": v.readonly},
                             **({"shared": True} if v.shared else {})) for v in self.volumes],
            "secrets": [dict({"name": s.name, "dest": s.dest}, **({"tmpfs": True} if s.tmpfs else {}))
                        for s in self.secrets],
            "resources": {"memory": r.memory, "pids": r.pids, "cpus": r.cpus},
            "drain": self.drain, "monitor": self.monitor, "stop_timeout": self.stop_timeout,
            "stop_first": self.stop_first, "keep_releases": self.keep_releases,
        }
        if self.command is not None:
            out["command"] = list(self.command)
        if not self.init:         # only when off: the default keeps every release id as it was
            out["init"] = False
        if self.needs:            # likewise only when set
            out["needs"] = list(self.needs)
        if self.stateful:
            out["stateful"] = True
        if self.pre_stop:
            out["pre_stop"] = list(self.pre_stop)
        if self.userns:           # likewise, only when on
            out["userns"] = True
        if self.network != "bridge":   # likewise, only when not the default
            out["network"] = self.network
        return out

    @classmethod
    def from_json(cls, d: Any) -> "Deploy":
        """Parse (and validate) the JSON form; SpecError names the bad key's path."""
        m = _obj(d, (), _DEPLOY_KEYS)
        h = _obj(m.get("health"), ("health",), _HEALTH_KEYS)
        r = _obj(m.get("resources"), ("resources",), ("memory", "pids", "cpus"))
        kw: Dict[str, Any] = {}
        for k in ("drain", "monitor", "stop_timeout"):
            if m.get(k) is not None:
                kw[k] = _num(m[k], (k,))
        if m.get("stop_first") is not None:
            kw["stop_first"] = _bool(m["stop_first"], ("stop_first",))
        if m.get("keep_releases") is not None:
            kw["keep_releases"] = _int(m["keep_releases"], ("keep_releases",))
        if m.get("command") is not None:
            kw["command"] = _strs(m["command"], ("command",))
        if m.get("init") is not None:
            kw["init"] = _bool(m["init"], ("init",))
        if m.get("needs") is not None:
            kw["needs"] = tuple(sorted(set(_strs(m["needs"], ("needs",)))))
        if m.get("stateful") is not None:
            kw["stateful"] = _bool(m["stateful"], ("stateful",))
        if m.get("pre_stop") is not None:
            kw["pre_stop"] = _strs(m["pre_stop"], ("pre_stop",))
        if m.get("userns") is not None:
            kw["userns"] = _bool(m["userns"], ("userns",))
        if m.get("network") is not None:
            kw["network"] = _str(m["network"], ("network",))
        health = Health(
            kind=_str(h.get("kind", "none") or "none", ("health", "kind")),
            path=None if h.get("path") is None else _str(h["path"], ("health", "path")),
            port=None if h.get("port") is None else _int(h["port"], ("health", "port")),
            command=_strs(h.get("command") or [], ("health", "command")),
            **{k: (_int if k == "retries" else _num)(h[k], ("health", k))
               for k in ("interval", "timeout", "retries", "start_period") if h.get(k) is not None})
        env = m.get("env") or {}
        if not isinstance(env, Mapping):
            raise SpecError(("env",), "expected an object of NAME: value")
        return cls(
            ports=tuple(_port(p, ("ports", i)) for i, p in enumerate(_list(m, "ports"))),
            health=health,
            env=tuple(sorted((str(k), _str(v, ("env", str(k)))) for k, v in env.items())),
            volumes=tuple(Volume(_str(v.get("name"), ("volumes", i, "name")),
                                 _str(v.get("dest"), ("volumes", i, "dest")),
                                 _bool(v.get("readonly", False), ("volumes", i, "readonly")),
                                 _bool(v.get("shared", False), ("volumes", i, "shared")))
                          for i, v in enumerate(_objs(m, "volumes", ("name", "dest", "readonly",
                                                                     "shared")))),
            secrets=tuple(SecretMount(_str(s.get("name"), ("secrets", i, "name")),
                                      _str(s.get("dest"), ("secrets", i, "dest")),
                                      _bool(s.get("tmpfs", False), ("secrets", i, "tmpfs")))
                          for i, s in enumerate(_objs(m, "secrets", ("name", "dest", "tmpfs")))),
            resources=Resources(
                memory=None if r.get("memory") is None else _int(r["memory"], ("resources", "memory")),
                pids=None if r.get("pids") is None else _int(r["pids"], ("resources", "pids")),
                cpus=None if r.get("cpus") is None else _num(r["cpus"], ("resources", "cpus"))),
            **kw)


@record
class Target(Record):
    """What should run for one service, as the agent persists it."""
    release: str
    index: str
    manifest: str
    deploy: Deploy = field(default_factory=Deploy)

    @classmethod
    def from_json(cls, service: str, t: Mapping[str, Any]) -> "Target":
        try:
            deploy = Deploy.from_json(t.get("deploy") or {})
        except SpecError as exc:
            raise exc.under(f"services/{service}/deploy") from None
        return cls(release=str(t["release"]), index=str(t.get("index") or ""),
                   manifest=str(t["manifest"]), deploy=deploy)

    def to_json(self) -> Dict[str, Any]:
        return {"release": self.release, "index": self.index, "manifest": self.manifest,
                "deploy": self.deploy.to_json()}


# --- validation ------------------------------------------------------------------------

def validate(d: Deploy) -> None:
    """Everything the agent refuses, in one place (``Deploy`` runs it on construction)."""
    if d.network not in NETWORKS:
        raise SpecError(("network",), f"expected one of {', '.join(NETWORKS)}, got {d.network!r}")
    seen = set()
    for i, p in enumerate(d.ports):
        for k in ("host", "container"):
            v = getattr(p, k)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65535:
                raise SpecError(("ports", i, k), f"expected a port 1-65535, got {v!r}")
        if p.protocol not in PROTOCOLS:
            raise SpecError(("ports", i, "protocol"), f"expected tcp or udp, got {p.protocol!r}")
        if (p.protocol, p.host) in seen:
            raise SpecError(("ports", i), f"host port {p.host}/{p.protocol} published twice")
        seen.add((p.protocol, p.host))
        if d.host_network and p.host != p.container:
            raise SpecError(("ports", i), f"with network: host the service listens on the "
                            f"host's own ports, and no DNAT maps {p.host} to {p.container}: "
                            f"write \"{p.container}:{p.container}\" (or make it listen on "
                            f"{p.host} and write \"{p.host}:{p.host}\")")
    _validate_health(d.health)
    if d.host_network and d.needs:
        raise SpecError(("needs",), "a service with network: host has no container address "
                        "that a name could admit: reach other services at their published "
                        "ports (127.0.0.1:PORT)")
    if d.host_network and d.userns:
        raise SpecError(("userns",), "network: host shares the host's network namespace, "
                        "which a user namespace's root may not configure: drop one of them")
    for i, n in enumerate(d.needs):
        if not isinstance(n, str) or not SERVICE_NAME_RE.match(n):
            raise SpecError(("needs", i), f"expected a service name, got {n!r}")
    for k, _ in d.env:
        if not k or "=" in k or "\0" in k:
            raise SpecError(("env",), f"expected variable names without '=', got {k!r}")
    dests: Dict[str, Tuple[Any, ...]] = {}
    for key, items in (("volumes", d.volumes), ("secrets", d.secrets)):
        for i, v in enumerate(items):
            if not NAME_RE.match(v.name or ""):
                raise SpecError((key, i, "name"), "expected a plain name (letters, digits, "
                                f"'_', '.', '-', at most 64), got {v.name!r}")
            _check_dest((key, i, "dest"), v.dest)
            if v.dest in dests:
                raise SpecError((key, i, "dest"), f"{v.dest} is mounted twice")
            dests[v.dest] = (key, i)
    r = d.resources
    if r.memory is not None and (isinstance(r.memory, bool) or not isinstance(r.memory, int)
                                 or r.memory < MIN_MEMORY):
        raise SpecError(("resources", "memory"), f"expected at least {MIN_MEMORY >> 20} MiB "
                        f"({MIN_MEMORY} bytes), got {r.memory!r}")
    if r.pids is not None and (isinstance(r.pids, bool) or not isinstance(r.pids, int)
                               or not 1 <= r.pids <= 1 << 22):
        raise SpecError(("resources", "pids"), f"expected 1 to {1 << 22} processes, got {r.pids!r}")
    if r.cpus is not None and (not _finite(r.cpus) or not 0 < r.cpus <= MAX_CPUS):
        raise SpecError(("resources", "cpus"), f"expected a number of CPUs > 0 and at most "
                        f"{MAX_CPUS:g}, got {r.cpus!r}")
    for k in ("drain", "monitor", "stop_timeout"):
        v = getattr(d, k)
        if not _finite(v) or not 0 <= v <= MAX_SECONDS:
            raise SpecError((k,), f"expected seconds between 0 and {MAX_SECONDS:g}, got {v!r}")
    if isinstance(d.keep_releases, bool) or not isinstance(d.keep_releases, int) or \
            not 1 <= d.keep_releases <= MAX_KEEP:
        raise SpecError(("keep_releases",), f"expected 1 to {MAX_KEEP}, got {d.keep_releases!r}")
    if d.command is not None and not d.command:
        raise SpecError(("command",), "expected a non-empty argv")


def _validate_health(h: Health) -> None:
    if h.kind not in HEALTH_KINDS:
        raise SpecError(("health", "kind"), f"expected one of {', '.join(HEALTH_KINDS)}, "
                        f"got {h.kind!r}")
    if h.kind in ("http", "tcp") and (isinstance(h.port, bool) or not isinstance(h.port, int)
                                       or not 1 <= h.port <= 65535):
        raise SpecError(("health", "port"), f"expected a port 1-65535, got {h.port!r}")
    if h.kind == "http" and not (isinstance(h.path, str) and h.path.startswith("/")
                                 and not any(c in h.path for c in "\r\n ")):
        raise SpecError(("health", "path"), f"expected a URL path starting with '/', got {h.path!r}")
    if h.kind == "exec" and not h.command:
        raise SpecError(("health", "command"), "an exec check needs a command")
    for k in ("interval", "timeout"):
        v = getattr(h, k)
        if not _finite(v) or not 0 < v <= MAX_SECONDS:
            raise SpecError(("health", k), f"expected seconds > 0 and at most {MAX_SECONDS:g}, "
                            f"got {v!r}")
    if not _finite(h.start_period) or not 0 <= h.start_period <= MAX_SECONDS:
        raise SpecError(("health", "start_period"), f"expected seconds between 0 and "
                        f"{MAX_SECONDS:g}, got {h.start_period!r}")
    if isinstance(h.retries, bool) or not isinstance(h.retries, int) or not 1 <= h.retries <= 1000:
        raise SpecError(("health", "retries"), f"expected 1 to 1000, got {h.retries!r}")


def _check_dest(where: Tuple[Any, ...], p: Any) -> None:
    if not isinstance(p, str) or not p.startswith("/") or ".." in p.split("/") or "\0" in p:
        raise SpecError(where, f"expected an absolute path without '..', got {p!r}")
    norm = "/" + "/".join(x for x in p.split("/") if x not in ("", "."))
    if norm == "/":
        raise SpecError(where, "cannot mount over the container's root")
    for k in KERNEL_DIRS:
        if norm == k or norm.startswith(k + "/"):
            raise SpecError(where, f"{norm} is inside {k}, which the runtime mounts itself "
                            "(a mount there could reach the host's kernel settings)")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# --- JSON readers (each names the path of what it refuses) -------------------------------

_DEPLOY_KEYS = ("ports", "health", "env", "volumes", "secrets", "resources", "drain", "monitor",
                "stop_timeout", "stop_first", "keep_releases", "command", "init", "needs",
                "stateful", "pre_stop", "userns", "network")
_HEALTH_KEYS = ("kind", "path", "port", "command", "interval", "timeout", "retries",
                "start_period")


def _obj(v: Any, where: Tuple[Any, ...], keys: Tuple[str, ...]) -> Mapping[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise SpecError(where, "expected an object")
    unknown = sorted(str(k) for k in v if k not in keys)
    if unknown:
        raise SpecError(where + (unknown[0],), "unknown key")
    return v


def _list(m: Mapping[str, Any], key: str) -> list:
    v = m.get(key)
    if v is None:
        return []
    if not isinstance(v, list):
        raise SpecError((key,), "expected a list")
    return v


def _objs(m: Mapping[str, Any], key: str, keys: Tuple[str, ...]) -> list:
    return [_obj(x, (key, i), keys) if x is not None else _bad((key, i), "an object", x)
            for i, x in enumerate(_list(m, key))]


def _port(p: Any, where: Tuple[Any, ...]) -> Port:
    m = _obj(p, where, ("host", "container", "protocol"))
    if p is None:
        _bad(where, "an object", p)
    return Port(_int(m.get("host"), where + ("host",)), _int(m.get("container"), where + ("container",)),
                _str(m.get("protocol", "tcp"), where + ("protocol",)))


def _bad(where: Tuple[Any, ...], what: str, v: Any):
    raise SpecError(where, f"expected {what}, got {v!r}")


def _num(v: Any, where: Tuple[Any, ...]) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        _bad(where, "a number", v)
    return float(v)


def _int(v: Any, where: Tuple[Any, ...]) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        _bad(where, "an integer", v)
    return v


def _bool(v: Any, where: Tuple[Any, ...]) -> bool:
    if not isinstance(v, bool):
        _bad(where, "true or false", v)
    return v


def _str(v: Any, where: Tuple[Any, ...]) -> str:
    if not isinstance(v, str):
        _bad(where, "a string", v)
    return v


def _strs(v: Any, where: Tuple[Any, ...]) -> Tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        _bad(where, "a list of strings", v)
    return tuple(v)


def parse_deploy(service: str, d: Any) -> Deploy:
    """The agent's entry point: a Deploy, or BadRequest located from the request's root."""
    try:
        return Deploy.from_json(d)
    except SpecError as exc:
        raise exc.under(f"services/{service}/deploy") from None
