"""One container's life on disk and in the runtime: create (overlay, bundle, runtime, network),
inspect, stop and remove, leaving nothing behind (no mount, no runtime state, no directory).
"""
from __future__ import annotations

import base64
import json
import os
import secrets as _secrets
import shutil
import subprocess
import time
from typing import Dict, List

from runtime import bundle, layers, names, network, oci, pid1, unpack, userns, volumes
from runtime.errors import BadRequest, RuntimeFailure
from runtime.layout import Layout
from runtime.meta import Meta, cdir, container_id, list_metas, log_path, rt_of, veth_key
from runtime.spec import Target

LOG_LIMIT = 1 << 20


def mounted(path: str) -> bool:
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp == path:
                return True
    return False


def _libc():
    import ctypes        # here, not at import: serve preloads this module and stays small
    return ctypes.CDLL(None, use_errno=True)


def _errno() -> int:
    import ctypes
    return ctypes.get_errno()


MS_NOSUID, MS_NODEV = 2, 4


def sys_mount(source: str, target: str, fstype: str, options: str, flags: int = 0) -> None:
    """mount(2) directly (no ``mount`` process on the start path)."""
    rc = _libc().mount(source.encode(), target.encode(), fstype.encode(), flags,
                       options.encode())
    if rc != 0:
        err = _errno()
        raise RuntimeFailure(f"mount {fstype} on {target}: {os.strerror(err)}")


def sys_umount(target: str) -> None:
    if _libc().umount2(target.encode(), 0) != 0:
        err = _errno()
        raise RuntimeFailure(f"umount {target}: {os.strerror(err)}")


def _run(argv: List[str]) -> None:
    p = subprocess.run(argv, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeFailure(f"{' '.join(argv[:3])}... failed: {p.stderr.strip()}")


def ensure_secrets_tmpfs(layout: Layout) -> None:
    os.makedirs(layout.secrets, mode=0o700, exist_ok=True)
    if not mounted(layout.secrets):
        _run(["mount", "-t", "tmpfs", "-o", "mode=0700,size=4m,nosuid,nodev,noexec", "tmpfs",
              layout.secrets])


def create(layout: Layout, rt: oci.Runtime, host_id: str, service: str, slot: str,
           target: Target, secret_values: Dict[str, str], ip: str, prepared: str = "") -> Meta:
    """Create and start a container for ``target`` in ``slot``. ``prepared`` (a lock token):
    create it, wired, and leave it at ``runc create`` for ``begin`` (its process waits before
    the image's entrypoint: nothing of the release runs). On any failure everything made so far
    is removed again before the error propagates."""
    cid = container_id(host_id, service, slot)
    d = cdir(layout, cid)
    if os.path.exists(d):
        raise RuntimeFailure(f"container dir {d} already exists")
    if oci.known(rt, cid):  # an orphan from an interrupted create: it holds the id
        oci.run_stop(rt, cid, 0, "", 0.0)
    deploy = target.deploy
    if deploy.host_network:     # the host's own stack: no address, veth or DNAT of its own
        ip = ""
    meta = Meta(id=cid, service=service, slot=slot, release=target.release,
                instance=_secrets.token_hex(6), runtime=rt.name, ip=ip, created=time.time())
    os.makedirs(d, mode=0o700)
    meta_path = os.path.join(d, "meta.json")
    meta.save(meta_path)
    try:
        rootfs = os.path.join(d, "rootfs")
        for sub in ("rootfs", "upper", "work"):
            os.makedirs(os.path.join(d, sub), mode=0o755, exist_ok=True)
        # the image's layers (each unpacked once on the host) as read-only lower directories;
        # nosuid, nodev: the image's setuid files and capabilities serve no host process
        sys_mount("overlay", rootfs, "overlay",
                  layers.overlay_options(unpack.lowerdirs(layout, target.manifest),
                                         f"{d}/upper", f"{d}/work"),
                  MS_NOSUID | MS_NODEV)
        vols = []
        for v in deploy.volumes:
            host = volumes.ensure_volume(layout, service, v.name, v.shared)
            vols.append((host, v.dest, v.readonly))
        image_config = unpack.image_config(layout, target.manifest)
        meta.stop_signal = oci.stop_signal((image_config.get("config") or {}).get("StopSignal"))
        try:
            uid, gid = bundle.resolve_user(rootfs,
                                           (image_config.get("config") or {}).get("User") or "")
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        secs = []
        if deploy.secrets:
            ensure_secrets_tmpfs(layout)
            sdir = os.path.join(layout.secrets, cid)
            os.makedirs(sdir, mode=0o700, exist_ok=True)
            for s in deploy.secrets:
                if s.name not in secret_values:
                    raise BadRequest(f"secret {s.name!r} is not on this host (secrets live "
                                     "on tmpfs only: apply again after a reboot)")
                p = os.path.join(sdir, s.name)
                fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400)
                os.fchown(fd, uid, gid)     # the container's own user reads it, nobody else
                with os.fdopen(fd, "wb") as f:
                    f.write(base64.b64decode(secret_values[s.name]))
                secs.append((p, s.dest))
        extra = []
        hosts = os.path.join(d, "hosts")
        with open(hosts, "w") as f:
            f.write(names.render_hosts_file(service, ip or "127.0.0.1", deploy.needs))
        extra.append((hosts, "/etc/hosts"))
        if os.path.exists("/etc/resolv.conf"):
            shutil.copyfile("/etc/resolv.conf", os.path.join(d, "resolv.conf"))
            extra.append((os.path.join(d, "resolv.conf"), "/etc/resolv.conf"))
        base = None
        if deploy.userns:
            base = bundle.userns_base(host_id, service)
            userns.hand_over(layout, d, vols, secs, base + uid, base + gid, base)
        binput = bundle.BundleInput(container_id=cid, hostname=service, rootfs=rootfs,
                                    cgroups_path=f"/orch/{cid}", uid=uid, gid=gid,
                                    volumes=tuple(vols), secrets=tuple(secs),
                                    extra_files=tuple(extra),
                                    init=pid1.find_init() if deploy.init else None,
                                    machine=os.uname().machine, userns_base=base)
        try:
            config = bundle.render_config(image_config, deploy, binput)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        if base is not None:
            userns.make_mountpoints(rootfs, config["mounts"])
        with open(os.path.join(d, "config.json"), "w") as f:
            f.write(json.dumps(config))         # dumps: json's C encoder (dump is pure Python)
        log = log_path(layout, service, slot)
        if os.path.exists(log):  # a fresh log per container; the previous one stays as .1
            os.replace(log, log + ".1")
        meta.pid = oci.run_create(rt, cid, d, os.path.join(d, "init.pid"), log)
        meta.starttime = oci.proc_starttime(meta.pid)
        meta.save(meta_path)
        if ip:
            network.run_wire_container(veth_key(meta), meta.pid, ip)
            _set_peers(layout)
        if prepared:
            meta.prepared = prepared
            meta.save(meta_path)
            return meta
        oci.run_start(rt, cid)
        meta.started = True
        meta.save(meta_path)
        return meta
    except BaseException:
        remove(layout, rt, meta, 0.0)
        raise


def begin(layout: Layout, rt: oci.Runtime, meta: Meta) -> Meta:
    """Start a container ``create(prepared=...)`` left created, with this process's priority
    (it was made at a background one, see agent.verb_prepare); from now on it counts as
    started (``created``: its settle window and restart records start here, not when it was
    made). On failure it is removed, unless an agent that died right after starting it
    already had (its process runs the image's entrypoint: recorded as started)."""
    meta_path = os.path.join(cdir(layout, meta.id), "meta.json")
    try:
        reprioritize(meta.pid, os.getpriority(os.PRIO_PROCESS, 0))
        oci.run_start(rt_of(meta, rt), meta.id)
    except BaseException:
        if not started_already(meta):
            remove(layout, rt, meta, 0.0)
            raise
    meta.started, meta.prepared, meta.created = True, "", time.time()
    meta.save(meta_path)
    return meta


def started_already(meta: Meta) -> bool:
    """Whether a created container's process has gone on to the image's entrypoint (before
    ``start`` it is the runtime's own init, waiting)."""
    try:
        with open(f"/proc/{meta.pid}/comm") as f:
            comm = f.read().strip()
    except OSError:
        return False
    return oci.proc_alive(meta.pid, meta.starttime) and not comm.startswith(("runc", "crun"))


def reprioritize(pid: int, nice: int) -> None:
    """Every thread of ``pid`` (nice is per thread; the one that execs the entrypoint passes
    its own on to the container's processes)."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        except OSError:
            pass


def remove(layout: Layout, rt: oci.Runtime, meta: Meta, stop_timeout: float) -> None:
    """Stop (TERM, wait, KILL), delete from the runtime, unmount, remove every file."""
    rt = rt_of(meta, rt)
    oci.run_stop(rt, meta.id, meta.pid, meta.starttime, stop_timeout, meta.stop_signal)
    network.run_unwire(veth_key(meta))
    d = cdir(layout, meta.id)
    rootfs = os.path.join(d, "rootfs")
    if os.path.exists(rootfs) and mounted(rootfs):
        sys_umount(rootfs)
    sdir = os.path.join(layout.secrets, meta.id)
    if os.path.isdir(sdir):
        shutil.rmtree(sdir)
    shutil.rmtree(d, ignore_errors=True)
    try:   # a stale pair is harmless until its address is reused, and every create rewrites it
        _set_peers(layout)
    except RuntimeFailure:
        pass


def _set_peers(layout: Layout) -> None:
    """Who may reach whom across the bridge, from the containers now on the host."""
    network.run_set_peers(((m.service, m.ip) for m in list_metas(layout) if m.ip),
                          names.read_names(layout))


def bound_log(path: str, limit: int = LOG_LIMIT) -> None:
    """Keep a log file under ``limit``: copy it to .1 and truncate (writers use O_APPEND)."""
    try:
        if os.path.getsize(path) <= limit:
            return
        shutil.copyfile(path, path + ".1")
        os.truncate(path, 0)
    except OSError:
        pass
