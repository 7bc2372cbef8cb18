#!/usr/bin/env python3
"""What a host does to make a release mountable, per layer (the layer store) against per
release (every layer unpacked again into one flat root, as before): prints figures, not a test.

    .venv/bin/python bench/layers.py [--rounds 3]

Builds examples/python-app for linux/amd64 twice (release 1, and release 2: a one-file change
of its config template), puts both images' blobs in a host store under a temporary directory
(on this machine's disk, as root, the way the agent does) and times `unpack_image` of release
1 then release 2, in each mode, rounds interleaved on fresh stores. Per release it prints the
wall time and how many bytes were unpacked (layer store: only the layers the host lacked).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.fleet import deploy  # noqa: E402
from orchestrator.image.store import Store  # noqa: E402
from runtime import layers, protocol, store, unpack  # noqa: E402
from runtime.layout import Layout  # noqa: E402


def project(tmp: Path) -> Path:
    d = tmp / "python-app"
    shutil.copytree(REPO / "examples" / "python-app", d)
    text = (d / "app.yaml").read_text()
    text = text.replace("platforms: [linux/amd64, linux/arm64, linux/arm/v7]", "platforms: [linux/amd64]")
    (d / "app.yaml").write_text(text)
    return d


def build(directory: Path, st: Store, release: str) -> str:
    prep = deploy.prepare(str(directory), {"release": release}, bring_up_lab=False, store=st,
                          environ={"PYAPP_GREETING_KEY": "bench"})
    return prep.releases[0].manifests["linux/amd64"]


def du(path: str) -> int:
    total = 0
    for dp, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dp, f)).st_size
            except OSError:
                pass
    return total


def run_mode(st: Store, manifests, flat: bool, tmp: Path) -> list:
    root = Path(tempfile.mkdtemp(dir=tmp))
    lay = Layout(str(root / "lib"), str(root / "run"))
    lay.ensure()
    for m in manifests:
        for d, size in st.blobs_for(m):
            if not os.path.exists(lay.blob(protocol.split_digest(d))):
                with st.open_blob(d) as f:
                    store.receive(lay, io.BytesIO(protocol.frame_header(d, size) + f.read()))
    out = []
    try:
        for m in manifests:
            before = du(lay.root) - du(lay.blobs)
            had = set(os.listdir(layers.root_of(lay))) if os.path.isdir(layers.root_of(lay)) else set()
            t = time.monotonic()
            if flat:             # what unpack_image did before the layer store: all layers, again
                manifest = unpack.read_manifest(lay, m)
                config = json.loads(store.read_verified(lay, manifest["config"]["digest"]))
                rootfs = os.path.join(unpack.image_dir(lay, m), "rootfs")
                os.makedirs(rootfs, mode=0o700)
                unpack.apply_layers(rootfs, manifest["layers"], lambda d: store.open_blob(lay, d),
                                    unpack.Budget(), m, unpack.diff_ids_of(config))
            else:
                unpack.unpack_image(lay, m)
            took = time.monotonic() - t
            now = set(os.listdir(layers.root_of(lay))) if os.path.isdir(layers.root_of(lay)) else set()
            out.append((took, du(lay.root) - du(lay.blobs) - before, len(now - had)))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="orch-layers-bench-", dir="/var/tmp"))
    try:
        st = Store(str(tmp / "store")).ensure()
        directory = project(tmp)
        m1, m2 = build(directory, st, "1"), build(directory, st, "2")
        n = len(st.blobs_for(m1)) - 1
        print(f"python-app amd64: {n} layers; release 2 changes one file of the top layer")
        results = {False: [], True: []}
        for _ in range(args.rounds):
            for flat in (True, False):
                results[flat].append(run_mode(st, [m1, m2], flat, tmp))
        for flat, name in ((True, "per release (flat, before)"), (False, "per layer (store, after)")):
            for i, rel in enumerate(("release 1 (first)", "release 2 (one-file change)")):
                ts = [r[i][0] for r in results[flat]]
                _, b, k = results[flat][0][i]
                print(f"{name:<28} {rel:<28} median {statistics.median(ts):6.3f} s  "
                      f"min {min(ts):6.3f}  max {max(ts):6.3f}   {b / 1e3:9.1f} kB unpacked"
                      + (f" ({k} layer(s))" if not flat else ""))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
