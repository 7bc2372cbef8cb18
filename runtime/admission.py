"""Admission checks of an ``apply`` request, before anything on the host changes: names,
spec, release id, blobs present, ports free (on the host and among services)."""
from __future__ import annotations

import json
import os
import re
from typing import Dict, List, Mapping

from runtime import protocol, spec, store
from runtime.errors import BadRequest, MissingBlob
from runtime.layout import Layout
from runtime.spec import Deploy, SpecError

PROJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def blobs_of(layout: Layout, manifest_digest: str) -> List[str]:
    from runtime import unpack
    m = unpack.read_manifest(layout, manifest_digest)
    return [m["config"]["digest"]] + [x["digest"] for x in m.get("layers", [])]


def check_service(layout: Layout, name: str, s: dict, plat: str) -> dict:
    try:
        spec.check_service_name(name)
    except SpecError as exc:
        raise BadRequest(f"service name: {exc.reason}") from None
    try:
        index, deploy = s["index"], s["deploy"]
    except (KeyError, TypeError):
        raise BadRequest(f"services/{name}: needs index and deploy") from None
    spec.parse_deploy(name, deploy)
    mac = s.get("secrets_mac")
    if mac is not None and not isinstance(mac, str):
        raise BadRequest(f"services/{name}/secrets_mac: expected a string")
    rel = protocol.release_id(index, deploy, mac)
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
        from runtime import layers
        stored = layers.by_blob(layout)       # a layer in the layer store needs no blob
        missing = [d for d in blobs_of(layout, manifest)
                   if d not in stored and not os.path.exists(layout.blob(protocol.split_digest(d)))]
    if missing:
        raise MissingBlob(f"services/{name}: blobs not on this host: {', '.join(missing)}",
                          missing=missing)
    out = {"release": rel, "index": index, "manifest": manifest, "deploy": deploy}
    if mac:
        out["secrets_mac"] = mac
    project = s.get("project")
    if project is not None:
        if not isinstance(project, str) or not PROJECT_RE.match(project):
            raise BadRequest(f"services/{name}/project: expected 1-63 of a-z A-Z 0-9 . _ -, "
                             f"got {project!r}")
        out["project"] = project       # who deployed it: the only one that may prune it
    return out


def check_ports(existing: Mapping[str, Deploy], new: Mapping[str, Deploy],
                previous: Mapping[str, Deploy] = {}) -> None:
    """Refuse a target where two services publish the same host port (names the new one), or
    where a new port is one a host process listens on (publishing 22 would hijack sshd).
    ``previous``: the current target of the services in ``new``; a ``network: host`` one
    listens on its ports itself, which is no reason to refuse its next release."""
    from runtime import network
    seen: Dict[tuple, str] = {}
    ours = {(p.protocol, p.host) for d in existing.values() for p in d.ports}
    ours |= {(p.protocol, p.host) for d in previous.values() if d.host_network for p in d.ports}
    listening = {proto: network.host_listening(proto) for proto in ("tcp", "udp")}
    for name in sorted(new):
        for p in new[name].ports:
            key = (p.protocol, p.host)
            if key not in ours and key[1] in listening.get(key[0], set()):
                raise BadRequest(f"services/{name}/deploy/ports: {key[1]}/{key[0]} is already "
                                 "in use by a process on the host")
    order = [(n, existing[n]) for n in sorted(existing)] + [(n, new[n]) for n in sorted(new)]
    for name, d in order:
        for p in d.ports:
            key = (p.protocol, p.host)
            if key in seen:
                raise BadRequest(f"services/{name}/deploy/ports: {key[1]}/{key[0]} is already "
                                 f"published by service {seen[key]}")
            seen[key] = name


def check_names(services) -> None:
    """Refuse two services of one host whose names hash to the same address (names.py)."""
    from runtime import names
    a, b = names.vip_clash(services)
    if a:
        raise BadRequest(f"services {a} and {b} would share the address {names.vip_of(a)} on this "
                         "host: rename one of them")
