"""Garbage collection on a host: what to keep (target, serving, rollback history, running
containers), and removing every image, unpacked layer, blob and record beyond that."""
from __future__ import annotations

import os
import shutil
import sys
import time
import zipfile
from typing import Dict, List

from runtime import admission, layers, meta, protocol, snapshot, unpack
from runtime.errors import AgentFailure
from runtime.layout import Layout

BLOB_GRACE = 600.0
DEFAULT_KEEP = 3


def read_records(layout: Layout) -> dict:
    """Every release this host was given, by service (what a rollback can go back to)."""
    from runtime.state import State
    return State(layout).records()


def trim_history(history: Dict[str, List[str]], keep_of: Dict[str, int]) -> Dict[str, List[str]]:
    """Each service's rollback history cut so that the host keeps ``keep_releases`` releases
    of it counting the serving one (the default 3: serving + the 2 before it)."""
    return {n: (list(h)[-(keep_of.get(n, DEFAULT_KEEP) - 1):] if keep_of.get(n, DEFAULT_KEEP) > 1 else [])
            for n, h in history.items()}


def releases_to_keep(target: dict, st: dict, container_releases) -> set:
    """(service, release) pairs gc must keep: the target, what serves, the rollback history
    (cut to keep_releases by ``trim_history``) and whatever a container still runs."""
    keep = {(n, t["release"]) for n, t in target.items()}
    keep |= {(n, c["release"]) for n, c in st["current"].items()}
    keep |= {(n, r) for n, hist in st["history"].items() for r in hist}
    keep |= set(container_releases)
    return keep


def run_gc(h) -> dict:
    """``gc`` verb: collect under the converge lock."""
    with h.state.flock("converge.lock"):
        snapshot.forget(h.layout.run)
        return collect(h)


def collect(h) -> dict:
    """Drop images, blobs and release records nothing keeps. The caller holds the converge
    lock (``apply`` and ``rollback`` collect at their end, so a host never holds more than
    ``keep_releases`` images of a service)."""
    layout = h.layout
    removed_images: List[str] = []
    removed_blobs: List[str] = []
    freed = 0
    st = h.state.status()
    target = h.state.target()
    keep_of = {n: int((t.get("deploy") or {}).get("keep_releases") or DEFAULT_KEEP)
               for n, t in target.items()}
    trimmed = trim_history(st["history"], keep_of)
    if trimmed != st["history"]:
        st["history"] = trimmed
        h.state.save_status(st)
    records = read_records(layout)
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
            keep_blobs.update(admission.blobs_of(layout, rec["manifest"]))
        except AgentFailure:
            pass
    for name in list(records):
        records[name] = {r: v for r, v in records[name].items() if (name, r) in keep_rel}
    h.state.save_records(records)
    for d in sorted(os.listdir(layout.images)):
        if d not in keep_images:
            p = os.path.join(layout.images, d)
            shutil.rmtree(p, ignore_errors=True)
            removed_images.append(d)
    keep_layers = {d for img in keep_images
                   for d in unpack.layer_ids(layout, "sha256:" + img)}
    removed_layers = layers.collect(layout, sorted(keep_layers))
    # a layer's blob is not kept once the layer store holds it: the layer stands for it (an
    # older agent kept both; a sender that did not ask ``have`` may send it again)
    keep_hex = {protocol.split_digest(d) for d in keep_blobs} - \
        {protocol.split_digest(b) for b in layers.by_blob(layout)}
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
    gc_source_caches()
    return {"removed_images": removed_images, "removed_blobs": removed_blobs,
            "removed_layers": removed_layers, "freed": freed}


def gc_source_caches() -> None:
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
