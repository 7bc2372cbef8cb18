#!/usr/bin/env python3
"""Image build figures: cold build per platform, warm rebuild after a one-file change, sizes.

    .venv/bin/python bench/build.py [--rounds 3] [--python]

Cold: a fresh store and cache for every platform and round (mmdebstrap downloads and extracts
the pinned packages from the mirror, the layer is written and compressed); the figure is the
median. Warm: one file of the default service's web page changes, then both platforms are
rebuilt in the same store (only the layers from that step on are made). ``--python`` adds the
examples/python-app image (python3-minimal, a run step through qemu for the arm platforms).
Works on copies of the manifests (their lock files included); nothing in the repo changes.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.image import build_services  # noqa: E402
from orchestrator.manifest import load_desired  # noqa: E402
from orchestrator.image.store import Store  # noqa: E402


def cold(src: str, service: str, platform: str, rounds: int, scratch: str):
    times, image = [], None
    for i in range(rounds):
        home = os.path.join(scratch, f"cold-{service}-{platform.replace('/', '-')}-{i}")
        t0 = time.monotonic()
        built = build_services(load_desired(src, {}), Store(os.path.join(home, "store")), platforms=[platform],
                               services=[service])
        times.append(time.monotonic() - t0)
        image = built[service].images[platform]
        shutil.rmtree(home, ignore_errors=True)
    return statistics.median(times), min(times), max(times), image


def mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="cold builds per platform (median printed)")
    ap.add_argument("--python", action="store_true", help="also the python3-minimal example (3 platforms)")
    args = ap.parse_args()
    scratch = tempfile.mkdtemp(prefix="orch-bench-build-")
    try:
        src = os.path.join(scratch, "manifests")
        shutil.copytree(REPO / "manifests", src)
        print(f"cold build, default service 'hello' (debian bookworm + busybox-static), median of {args.rounds}:")
        results = {}
        for platform in ("linux/amd64", "linux/arm64"):
            med, lo, hi, image = cold(src, "hello", platform, args.rounds, scratch)
            results[platform] = med
            print(f"  {platform:<12} {med:6.2f} s  (min {lo:.2f}, max {hi:.2f})  image {mb(image.size)}, "
                  f"{len(image.layers)} layers")
        print(f"  arm64 / amd64 ratio: {results['linux/arm64'] / results['linux/amd64']:.2f}  (target <= 1.2)")

        home = os.path.join(scratch, "warm")
        store = Store(os.path.join(home, "store"))
        build_services(load_desired(src, {}), store)
        page = os.path.join(src, "hello", "www", "style.css")
        warm = []
        for i in range(5):
            with open(page, "a") as fh:
                fh.write(f"/* change {i} */\n")
            t0 = time.monotonic()
            built = build_services(load_desired(src, {}), store)["hello"]
            warm.append(time.monotonic() - t0)
        counts = {p: (i.built, i.cached) for p, i in built.images.items()}
        print(f"warm rebuild after a one-file change (both platforms, load + build), median of 5: "
              f"{statistics.median(warm):.3f} s  (max {max(warm):.3f}; target < 1 s)")
        print("  layers built/cached per platform: " + ", ".join(f"{p} {b}/{c}" for p, (b, c) in counts.items()))
        t0 = time.monotonic()
        build_services(load_desired(src, {}), store)
        print(f"no-change rebuild: {time.monotonic() - t0:.3f} s")
        print("image sizes (compressed: manifest + config + layers):")
        for p, i in built.images.items():
            print(f"  hello {p:<12} {mb(i.size)}")

        if args.python:
            py = os.path.join(scratch, "python-app")
            shutil.copytree(REPO / "examples" / "python-app", py)
            print("cold build, examples/python-app (python3-minimal; the run step is emulated on arm):")
            base = None
            for platform in ("linux/amd64", "linux/arm64", "linux/arm/v7"):
                med, lo, hi, image = cold(py, "pyapp", platform, 1, scratch)
                base = base or med
                print(f"  {platform:<12} {med:6.2f} s  ratio {med / base:.2f}  image {mb(image.size)}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
