"""OCI runtime bundle: render config.json from the image config and the deploy spec.

``render_config`` is pure (no I/O): everything it needs is passed in, so it is tested by
comparing its output. ``resolve_user`` reads the image's /etc/passwd and /etc/group.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from runtime import pid1, seccomp
from runtime.spec import Deploy

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CAPS = (  # docker's default set minus MKNOD, NET_RAW, AUDIT_WRITE, SETFCAP
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_NET_BIND_SERVICE", "CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID", "CAP_SYS_CHROOT",
)
MASKED = ("/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
          "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
          "/sys/firmware")
READONLY = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
CPU_PERIOD = 100000
USERNS_SIZE = 65536
BUILD_CAPS = CAPS + ("CAP_AUDIT_WRITE", "CAP_SETFCAP")  # package scripts set file capabilities


@dataclass(frozen=True)
class BundleInput:
    container_id: str
    hostname: str
    rootfs: str
    cgroups_path: str
    uid: int = 0
    gid: int = 0
    volumes: Tuple[Tuple[str, str, bool], ...] = ()     # (host path, dest, readonly)
    secrets: Tuple[Tuple[str, str], ...] = ()           # (host file on tmpfs, dest)
    extra_files: Tuple[Tuple[str, str], ...] = field(default=())  # (host file, dest) ro binds
    init: Optional[str] = None                          # host's static init binary, run as PID 1
    machine: str = ""                                   # host kernel's os.uname().machine (seccomp)
    userns_base: Optional[int] = None                   # host uid/gid of the container's root


def args_of(image_config: Mapping, override: Optional[Sequence[str]] = None) -> List[str]:
    cfg = image_config.get("config") or {}
    if override:
        return list(override)
    args = list(cfg.get("Entrypoint") or []) + list(cfg.get("Cmd") or [])
    return args


def env_of(image_config: Mapping, env: Mapping[str, str]) -> List[str]:
    merged: Dict[str, str] = {}
    for item in (image_config.get("config") or {}).get("Env") or []:
        k, _, v = item.partition("=")
        merged[k] = v
    merged.update({str(k): str(v) for k, v in env.items()})
    if "PATH" not in merged:
        merged["PATH"] = DEFAULT_PATH.split("=", 1)[1]
    return [f"{k}={merged[k]}" for k in sorted(merged)]


def render_config(image_config: Mapping, deploy: Deploy, b: BundleInput) -> dict:
    """The config.json for one container (a dict; the caller writes it)."""
    cfg = image_config.get("config") or {}
    args = args_of(image_config, deploy.command)
    if not args:
        raise ValueError("image has neither Entrypoint nor Cmd and the spec sets no command")
    res = deploy.resources
    resources: dict = {"devices": [{"allow": False, "access": "rwm"}]}
    if res.memory:
        resources["memory"] = {"limit": res.memory, "swap": res.memory}
    if res.pids:
        resources["pids"] = {"limit": res.pids}
    if res.cpus:
        resources["cpu"] = {"quota": int(res.cpus * CPU_PERIOD), "period": CPU_PERIOD}
    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "mode=1777", "size=65536k"]},
    ]
    for host, dest, ro in b.volumes:
        opts = ["rbind", "nosuid", "nodev"] + (["ro"] if ro else ["rw"])
        mounts.append({"destination": dest, "type": "bind", "source": host, "options": opts})
    for host, dest in tuple(b.extra_files) + tuple(b.secrets):
        mounts.append({"destination": dest, "type": "bind", "source": host,
                       "options": ["bind", "ro", "nosuid", "nodev", "noexec"]})
    if b.init:   # bound after /dev's tmpfs; executable (no noexec), read-only
        args = pid1.wrap_args(args)
        mounts.append({"destination": pid1.DEST, "type": "bind", "source": b.init,
                       "options": ["bind", "ro", "nosuid", "nodev"]})
    caps = list(CAPS) if b.uid == 0 else []
    config = {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": b.uid, "gid": b.gid},
            "args": args,
            "env": env_of(image_config, deploy.env_map),
            "cwd": cfg.get("WorkingDir") or "/",
            "capabilities": {"bounding": list(CAPS), "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096}],
            "noNewPrivileges": True,
        },
        "root": {"path": b.rootfs, "readonly": True},
        "hostname": b.hostname,
        "mounts": mounts,
        "linux": {
            "cgroupsPath": b.cgroups_path,
            "resources": resources,
            # network: host joins the host's network namespace (no "network" entry)
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")
                           if t != "network" or not deploy.host_network],
            "maskedPaths": list(MASKED),
            "readonlyPaths": list(READONLY),
            "seccomp": seccomp.render_profile(b.machine),
        },
    }
    if b.userns_base is not None:
        ids = [{"containerID": 0, "hostID": b.userns_base, "size": USERNS_SIZE}]
        config["linux"]["namespaces"].append({"type": "user"})
        config["linux"]["uidMappings"] = ids
        config["linux"]["gidMappings"] = [dict(i) for i in ids]
    return config


def userns_base(host_id: str, service: str) -> int:
    """The first host uid (and gid) of a service's user namespace: a range of USERNS_SIZE ids
    per service and host, from 2**20 up (above the ranges /etc/subuid hands to people), the
    same for both slots so that volumes keep their owner across releases."""
    n = int(hashlib.sha256(f"{host_id}/{service}".encode()).hexdigest()[:8], 16)
    return (16 + n % 16000) * USERNS_SIZE


def render_build_config(argv: Sequence[str], env: Sequence[str], cwd: str,
                        hostname: str = "orch-build", uid: int = 0, gid: int = 0,
                        machine: str = "") -> dict:
    """The config.json of a build sandbox (a ``run:`` step): a container's own config (same
    namespaces, masks, devices, mounts, seccomp filter for the build machine's ``machine``:
    nothing of the build machine) with a writable root ``rootfs`` beside it, the build
    capabilities and a /tmp without a size cap."""
    cfg = render_config({"config": {"WorkingDir": cwd, "Env": list(env)}},
                        Deploy(command=tuple(argv), init=False),
                        BundleInput(container_id="build", hostname=hostname, rootfs="rootfs",
                                    cgroups_path="", machine=machine))
    cfg["root"]["readonly"] = False
    cfg["process"]["env"] = list(env)
    cfg["process"]["user"] = {"uid": uid, "gid": gid}
    caps = list(BUILD_CAPS)
    cfg["process"]["capabilities"] = {k: caps for k in ("bounding", "effective", "permitted")}
    del cfg["linux"]["cgroupsPath"]
    for m in cfg["mounts"]:
        if m["destination"] == "/tmp":
            m["options"] = [o for o in m["options"] if not o.startswith("size=")]
    return cfg


def _table(path: str) -> List[List[str]]:
    try:
        with open(path) as f:
            return [line.rstrip("\n").split(":") for line in f if line.strip()]
    except OSError:
        return []


def resolve_user(rootfs: str, user: str) -> Tuple[int, int]:
    """``uid``, ``uid:gid``, ``name`` or ``name:group`` against the image's own files.

    Reads rootfs/etc/passwd with plain open(): a symlinked /etc/passwd pointing outside the
    root would be read from the host, so links are refused."""
    if not user:
        return 0, 0
    name, _, group = user.partition(":")

    def table(rel: str) -> List[List[str]]:
        p = os.path.join(rootfs, rel)
        if os.path.islink(p) or os.path.islink(os.path.dirname(p)):
            return []
        return _table(p)

    uid: Optional[int] = None
    gid: Optional[int] = None
    if name.isdigit():
        uid = int(name)
    for row in table("etc/passwd"):
        if len(row) >= 4 and (row[0] == name or (uid is not None and row[2] == str(uid))):
            uid, gid = int(row[2]), int(row[3])
            break
    if uid is None:
        raise ValueError(f"user {name!r} not found in the image's /etc/passwd")
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            for row in table("etc/group"):
                if len(row) >= 3 and row[0] == group:
                    gid = int(row[2])
                    break
            else:
                raise ValueError(f"group {group!r} not found in the image's /etc/group")
    return uid, gid if gid is not None else 0
