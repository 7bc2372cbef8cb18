"""Rendering OCI JSON documents (pure): image config, platform manifest, image index."""
from __future__ import annotations

import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

from orchestrator.manifest.model import ImageConfig
from orchestrator.manifest.units import PLATFORM_ARCH
from orchestrator.image.store import MT_CONFIG, MT_INDEX, MT_MANIFEST

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def iso_time(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def platform_fields(platform: str) -> Dict[str, str]:
    arch, variant, _deb = PLATFORM_ARCH[platform]
    out = {"os": "linux", "architecture": arch}
    if variant:
        out["variant"] = variant
    return out


def merge_env(base: Sequence[str], ours: Mapping[str, str]) -> List[str]:
    """Base ``K=V`` list, overridden by ours; PATH is always present."""
    merged: Dict[str, str] = {}
    for item in base or ():
        k, _, v = item.partition("=")
        merged[k] = v
    merged.update(ours)
    merged.setdefault("PATH", DEFAULT_PATH)
    return [f"{k}={v}" for k, v in merged.items()]


def render_config(platform: str, base: Mapping[str, Any], cfg: ImageConfig, diff_ids: Sequence[str],
                  history: Sequence[Mapping[str, Any]], epoch: int) -> Dict[str, Any]:
    """The image config: base image settings, overridden by the manifest's ``image:`` keys."""
    b = dict(base or {})
    c: Dict[str, Any] = {"Env": merge_env(b.get("Env") or [], cfg.env)}
    entrypoint = list(cfg.entrypoint) if cfg.entrypoint is not None else b.get("Entrypoint")
    if cfg.cmd is not None:
        cmd = list(cfg.cmd)
    elif cfg.entrypoint is not None:
        cmd = None                      # a new entrypoint drops the base's cmd (as docker does)
    else:
        cmd = b.get("Cmd")
    if entrypoint:
        c["Entrypoint"] = entrypoint
    if cmd:
        c["Cmd"] = cmd
    workdir = cfg.workdir or b.get("WorkingDir")
    if workdir:
        c["WorkingDir"] = workdir
    user = cfg.user if cfg.user is not None else b.get("User")
    if user:
        c["User"] = user
    labels = dict(b.get("Labels") or {})
    labels.update(cfg.labels)
    if labels:
        c["Labels"] = labels
    exposed = dict(b.get("ExposedPorts") or {})
    exposed.update({p: {} for p in cfg.expose})
    if exposed:
        c["ExposedPorts"] = exposed
    signal = cfg.stop_signal or b.get("StopSignal")
    if signal:
        c["StopSignal"] = signal
    doc = dict(platform_fields(platform))
    doc.update({"created": iso_time(epoch), "config": c,
                "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
                "history": [dict(h) for h in history]})
    return doc


def render_manifest(config_digest: str, config_size: int, layers: Sequence[Mapping[str, Any]],
                    annotations: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    doc: Dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": layer["media_type"], "digest": layer["digest"], "size": layer["size"]}
                   for layer in layers],
    }
    if annotations:
        doc["annotations"] = dict(annotations)
    return doc


def render_index(entries: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """``entries``: [{platform, digest, size}] in the manifest's platform order."""
    return {
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [{"mediaType": MT_MANIFEST, "digest": e["digest"], "size": e["size"],
                       "platform": platform_fields(e["platform"])} for e in entries],
    }
