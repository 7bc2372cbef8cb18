"""The agent verbs: each takes parsed args (+ a request) and returns one JSON-able dict."""
from __future__ import annotations

import hashlib
import json
import os
import platform as _platform
import re
import shutil
import sys
import time
import zipfile
from typing import Any, Dict, List, Optional

from runtime import meta, protocol, spec, store
from runtime.errors import AgentFailure, BadRequest, MissingBlob, NotFound
from runtime.layout import Layout, read_json, write_json

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
ARCH = {"x86_64": "linux/amd64", "amd64": "linux/amd64", "aarch64": "linux/arm64",
        "arm64": "linux/arm64", "armv7l": "linux/arm/v7", "armv6l": "linux/arm/v6"}
BLOB_GRACE = 600.0


def host_platform(etc: str = "/etc/orch/platform") -> str:
    try:
        with open(etc) as f:
            p = f.read().strip()
        if p:
            return p
    except OSError:
        pass
    return ARCH.get(_platform.machine(), "linux/" + _platform.machine())


def agent_digest() -> str:
    path = sys.argv[0]
    if path and zipfile.is_zipfile(path):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return "sha256:" + h.hexdigest()
    return "dev"


def make_host(layout: Layout, log=None):
    from runtime import cgroups, host, oci
    layout.ensure()
    cgroups.run_ensure_cgroups()
    rt = oci.choose_runtime(layout.run)
    return host.Host(layout, rt, log=log or (lambda m: None))


# --- verbs --------------------------------------------------------------------------------

def verb_info(layout: Layout, req: dict) -> dict:
    from runtime import oci
    layout.ensure()
    rt = oci.choose_runtime(layout.run)
    from runtime.resources import free_disk, free_memory
    pid = serve_pid(layout)
    return {"platform": host_platform(), "agent_digest": agent_digest(), "runtime": rt.name,
            "runtime_version": oci.version(rt) if req.get("runtime_version", True) else None,
            "python": _platform.python_version(),
            "free_disk": free_disk(layout.root), "free_memory": free_memory(),
            "nft": shutil.which("nft") is not None, "protocol": protocol.PROTOCOL_VERSION,
            "host_id": layout.host_id(), "serve_pid": pid, "serve_agent": serve_agent(pid)}


def verb_observe(layout: Layout, req: dict) -> dict:
    """What `orch plan`/`apply` asks every host, in one round trip: info (without the runtime's
    version, which costs a process), which of ``digests`` are here, and the status."""
    return {"info": verb_info(layout, {"runtime_version": False}), "have": verb_have(layout, req),
            "status": verb_status(layout, {})}


def verb_have(layout: Layout, req: dict) -> dict:
    layout.ensure()
    digests = req.get("digests")
    if not isinstance(digests, list):
        raise BadRequest("have: expected {\"digests\": [...]}")
    return store.have(layout, digests)


def verb_receive(layout: Layout, stream) -> dict:
    layout.ensure()
    return store.receive(layout, stream)


def _blobs_of(layout: Layout, manifest_digest: str) -> List[str]:
    from runtime import unpack
    m = unpack.read_manifest(layout, manifest_digest)
    return [m["config"]["digest"]] + [x["digest"] for x in m.get("layers", [])]


def _check_service(layout: Layout, name: str, s: dict, plat: str) -> dict:
    if not NAME_RE.match(name or ""):
        raise BadRequest(f"service name {name!r}: use a-z, 0-9 and '-', at most 40 chars")
    try:
        index, deploy = s["index"], s["deploy"]
    except (KeyError, TypeError):
        raise BadRequest(f"services/{name}: needs index and deploy") from None
    spec.check_deploy(name, deploy)
    rel = protocol.release_id(index, deploy)
    if s.get("release") and s["release"] != rel:
        raise BadRequest(f"services/{name}/release: {s['release']} does not match the index "
                         f"and deploy spec ({rel})")
    manifest = s.get("manifest")
    if not manifest:
        from runtime import unpack
        idx = json.loads(store.read_verified(layout, index))
        manifest = unpack.select_manifest(idx, plat)
    missing = [d for d in [manifest] if not os.path.exists(layout.blob(protocol.split_digest(d)))]
    if not missing:
        missing = [d for d in _blobs_of(layout, manifest)
                   if not os.path.exists(layout.blob(protocol.split_digest(d)))]
    if missing:
        raise MissingBlob(f"services/{name}: blobs not on this host: {', '.join(missing)}",
                          missing=missing)
    return {"release": rel, "index": index, "manifest": manifest, "deploy": deploy}


def _check_ports(existing: dict, new: dict) -> None:
    """Refuse a target where two services publish the same host port (names the new one), or
    where a new port is one a host process listens on (publishing 22 would hijack sshd)."""
    from runtime import network
    seen: Dict[tuple, str] = {}
    ours = {(p.get("protocol", "tcp"), int(p["host"])) for t in existing.values()
            for p in (t.get("deploy") or {}).get("ports") or []}
    listening = {proto: network.host_listening(proto) for proto in ("tcp", "udp")}
    for name in sorted(new):
        for p in (new[name].get("deploy") or {}).get("ports") or []:
            key = (p.get("protocol", "tcp"), int(p["host"]))
            if key not in ours and key[1] in listening.get(key[0], set()):
                raise BadRequest(f"services/{name}/deploy/ports: {key[1]}/{key[0]} is already "
                                 "in use by a process on the host")
    order = [(n, existing[n]) for n in sorted(existing)] + [(n, new[n]) for n in sorted(new)]
    for name, t in order:
        for p in (t.get("deploy") or {}).get("ports") or []:
            key = (p.get("protocol", "tcp"), int(p["host"]))
            if key in seen:
                raise BadRequest(f"services/{name}/deploy/ports: {key[1]}/{key[0]} is already "
                                 f"published by service {seen[key]}")
            seen[key] = name


def _records(layout: Layout) -> dict:
    return read_json(os.path.join(layout.state, "releases.json"), {}) or {}


def verb_apply(layout: Layout, req: dict, log=None) -> dict:
    services = req.get("services")
    if not isinstance(services, dict) or not services:
        raise BadRequest("apply: expected {\"services\": {NAME: {...}}, \"who\": ...}")
    who = str(req.get("who") or "unknown")
    h = make_host(layout, log)
    plat = host_platform()
    checked = {n: _check_service(layout, n, s, plat) for n, s in sorted(services.items())}
    with h.state.flock("converge.lock"):
        target = h.state.target()
        _check_ports({n: t for n, t in target.items() if n not in checked}, checked)
        records = _records(layout)
        st = h.state.status()
        for n, t in checked.items():
            target[n] = t
            records.setdefault(n, {})[t["release"]] = t
            h.state.save_secrets(n, dict(services[n].get("secrets") or {}))
            (st["failed"].get(n) or {}).pop(t["release"], None)
        h.state.save_status(st)
        write_json(os.path.join(layout.state, "releases.json"), records, 0o600, durable=True)
        h.state.save_target(target)
        for n, t in checked.items():
            h.state.audit(who, "apply", n, t["release"])
        if not req.get("wait", True):
            return {"services": {n: {"ok": True, "accepted": True, "wanted": t["release"]}
                                 for n, t in checked.items()}}
        h.converge(services=list(checked))
    from runtime.host import result_of
    return {"services": {n: result_of(h, n) for n in checked}}


def verb_rollback(layout: Layout, service: str, to: Optional[str], who: str, log=None) -> dict:
    h = make_host(layout, log)
    with h.state.flock("converge.lock"):
        st = h.state.status()
        records = _records(layout).get(service) or {}
        if to is None:
            hist = st["history"].get(service) or []
            if not hist:
                raise NotFound(f"{service}: no previous release to roll back to")
            to = hist[-1]
        if to not in records:
            raise NotFound(f"{service}: release {to} is not known on this host")
        target = h.state.target()
        target[service] = records[to]
        (st["failed"].get(service) or {}).pop(to, None)
        h.state.save_status(st)
        h.state.save_target(target)
        h.state.audit(who, "rollback", service, to)
        h.converge(services=[service])
    from runtime.host import result_of
    return {"services": {service: result_of(h, service)}}


def verb_remove(layout: Layout, service: str, who: str, log=None) -> dict:
    """Stop a service's containers, drop its published ports and forget its target."""
    h = make_host(layout, log)
    with h.state.flock("converge.lock"):
        target = h.state.target()
        if service not in target and service not in h.state.status()["current"]:
            raise NotFound(f"{service}: not deployed on this host")
        old = (target.pop(service, None) or {}).get("release", "")
        h.state.save_target(target)
        h.state.audit(who, "remove", service, old)
        h.converge(services=[service])
    return {"services": {service: {"ok": True, "removed": True, "release": None}}}


def _health(st: dict, name: str, m) -> str:
    """What serve's last probes say about the serving container, else whether it passed its
    check when it was started."""
    if m is None:
        return "unknown"
    rec = (st.get("health") or {}).get(name) or {}
    if rec.get("instance") == m.instance:
        return rec["state"]
    return "healthy" if m.instance in st["healthy"] else "unknown"


def verb_status(layout: Layout, req: dict) -> dict:
    from runtime import oci
    layout.ensure()
    rt = oci.choose_runtime(layout.run)
    from runtime.state import State
    state = State(layout)
    st = state.status()
    target = state.target()
    metas = {(m.service, m.slot): m for m in meta.list_metas(layout)}
    out: Dict[str, Any] = {}
    for name in sorted(set(target) | set(st["current"])):
        cur = st["current"].get(name) or {}
        m = metas.get((name, cur.get("slot")))
        wanted = (target.get(name) or {}).get("release")
        entry = {"release": cur.get("release"), "slot": cur.get("slot"),
                 "state": meta.status_of(m, rt) if m else "missing",
                 "health": _health(st, name, m),
                 "since": cur.get("since"), "previous": list(st["history"].get(name) or []),
                 "wanted": wanted,
                 "slots": {s: {"release": x.release, "state": meta.status_of(x, rt),
                               "ip": x.ip} for (n, s), x in sorted(metas.items()) if n == name}}
        why = (st["failed"].get(name) or {}).get(wanted)
        if why:
            entry["error"] = why
        out[name] = entry
    return {"services": out, "serve_pid": serve_pid(layout)}


def verb_logs(layout: Layout, service: str, tail: int, follow: bool, out) -> None:
    """Raw log text of the serving slot (stdout and stderr interleaved) on ``out``: the last
    ``tail`` lines, then, with ``follow``, whatever is appended until the caller hangs up."""
    from runtime.state import State
    st = State(layout).status()
    cur = st["current"].get(service)
    if not cur:
        raise NotFound(f"{service}: not running on this host")
    path = meta.log_path(layout, service, cur["slot"])
    sink = out.buffer if hasattr(out, "buffer") else out
    try:
        with open(path, "rb") as f:
            data = f.read()
            pos = f.tell()
    except FileNotFoundError:
        data, pos = b"", 0
    lines = data.splitlines(keepends=True)
    sink.write(b"".join(lines[-tail:]) if tail > 0 else b"")
    sink.flush()
    while follow:
        time.sleep(0.25)
        try:
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_size < pos:
                    pos = 0
                f.seek(pos)
                data = f.read()
                pos = f.tell()
        except FileNotFoundError:
            data = b""
        if data:
            sink.write(data)
            sink.flush()


def releases_to_keep(target: dict, st: dict, container_releases) -> set:
    """(service, release) pairs gc must keep: the target, what serves, the rollback history
    (already cut to keep_releases) and whatever a container still runs."""
    keep = {(n, t["release"]) for n, t in target.items()}
    keep |= {(n, c["release"]) for n, c in st["current"].items()}
    keep |= {(n, r) for n, hist in st["history"].items() for r in hist}
    keep |= set(container_releases)
    return keep


def verb_gc(layout: Layout, req: dict) -> dict:
    h = make_host(layout)
    removed_images: List[str] = []
    removed_blobs: List[str] = []
    freed = 0
    with h.state.flock("converge.lock"):
        st = h.state.status()
        target = h.state.target()
        records = _records(layout)
        keep_rel = releases_to_keep(target, st, ((m.service, m.release)
                                                 for m in meta.list_metas(layout)))
        keep_blobs = set()
        keep_images = set()
        for name, rel in keep_rel:
            rec = (records.get(name) or {}).get(rel)
            if not rec:
                continue
            keep_images.add(protocol.split_digest(rec["manifest"]))
            keep_blobs.update({rec["index"], rec["manifest"]})
            try:
                keep_blobs.update(_blobs_of(layout, rec["manifest"]))
            except AgentFailure:
                pass
        for name in list(records):
            records[name] = {r: v for r, v in records[name].items() if (name, r) in keep_rel}
        write_json(os.path.join(layout.state, "releases.json"), records, 0o600)
        for d in sorted(os.listdir(layout.images)):
            if d not in keep_images:
                p = os.path.join(layout.images, d)
                shutil.rmtree(p, ignore_errors=True)
                removed_images.append(d)
        keep_hex = {protocol.split_digest(d) for d in keep_blobs}
        now = time.time()
        for d in sorted(os.listdir(layout.blobs)):
            p = layout.blob(d)
            stt = os.stat(p)
            if d not in keep_hex and now - stt.st_mtime > BLOB_GRACE:
                os.unlink(p)
                freed += stt.st_size
                removed_blobs.append("sha256:" + d)
        for d in os.listdir(layout.incoming):
            p = os.path.join(layout.incoming, d)
            if now - os.stat(p).st_mtime > 3600:
                freed += os.stat(p).st_size
                os.unlink(p)
    _gc_source_caches()
    return {"removed_images": removed_images, "removed_blobs": removed_blobs, "freed": freed}


def _gc_source_caches() -> None:
    """Drop the extracted-sources caches of agent files that are gone (see orchestrator.agent.bundle)."""
    pyz = os.path.abspath(sys.argv[0])
    cache_root = os.path.join(os.path.dirname(pyz), ".cache")
    if not zipfile.is_zipfile(pyz) or not os.path.isdir(cache_root):
        return
    for entry in os.listdir(cache_root):
        name, _, size = entry.rpartition("-")
        path = os.path.join(os.path.dirname(pyz), name)
        try:
            if os.path.getsize(path) == int(size):
                continue
        except (OSError, ValueError):
            pass
        shutil.rmtree(os.path.join(cache_root, entry), ignore_errors=True)


def verb_lock(layout: Layout, req: dict) -> dict:
    from runtime.state import State
    layout.ensure()
    holder = req.get("holder")
    if not holder:
        raise BadRequest("lock: expected {\"holder\": ..., \"ttl\": seconds}")
    return {"ok": True, "lock": State(layout).lock(str(holder), float(req.get("ttl", 900)))}


def verb_unlock(layout: Layout, req: dict) -> dict:
    from runtime.state import State
    layout.ensure()
    prev = State(layout).unlock(str(req.get("holder") or ""), bool(req.get("force")))
    return {"ok": True, "released": prev}


def verb_audit(layout: Layout, req: dict) -> dict:
    from runtime.state import State
    layout.ensure()
    return {"lines": State(layout).audit_lines()}


def serve_pid(layout: Layout) -> Optional[int]:
    try:
        with open(layout.pidfile) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().split(b"\0")
    except OSError:
        return None
    return pid if b"serve" in cmd else None


def serve_agent(pid: Optional[int]) -> Optional[str]:
    """The agent file the running ``serve`` was started from (to tell an upgrade is due)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return None
    return next((a for a in args if a.endswith(".pyz")), None)
