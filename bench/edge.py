#!/usr/bin/env python3
"""Edge figures: a deploy over a slow lab link next to `rsync -az` of the same root (prints
numbers; not a test).

    .venv/bin/python bench/edge.py [--rate 2mbit]

On a lab of one amd64 host whose link is throttled to `--rate` (tc tbf, both directions):
1. first deploy of examples/python-app (amd64 only): wall time of `orch apply` (agent upload,
   layers, unpack, start, health) and the bytes it shipped;
2. `rsync -az` over SSH of the root that deploy unpacked on the host, to an empty directory
   on the same host over the same link: wall time and bytes sent;
3. a one-file change (`--var release=2`: the config template), built first: `orch apply` again
   (its time includes the rollout's health checks: start_period, monitor and drain of the
   example), and rsync of the new root onto the first copy.

The lab is named bench-edge-* and removed afterwards; traffic stays inside the lab's namespaces.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.lab.layout import LabLayout, LabSpec  # noqa: E402
from orchestrator.lab.machine import LabMachine  # noqa: E402

ORCH = [sys.executable, "-m", "orchestrator.cli"]


def project(tmp: Path, lab: str, rate: str) -> Path:
    d = tmp / "python-app"
    shutil.copytree(REPO / "examples" / "python-app", d)
    text = (d / "app.yaml").read_text()
    text = re.sub(r"(?m)^lab: .*$", f"lab: {{hosts: 1, arm64: 0, armv7: 0, link_rate: {rate}}}", text)
    text = re.sub(r"(?m)^name: pylab$", f"name: {lab}", text)
    text = text.replace("platforms: [linux/amd64, linux/arm64, linux/arm/v7]", "platforms: [linux/amd64]")
    (d / "app.yaml").write_text(text)
    return d


def orch(argv, env) -> float:
    t = time.monotonic()
    proc = subprocess.run(ORCH + argv, env=env, cwd=REPO, capture_output=True, text=True)
    took = time.monotonic() - t
    if proc.returncode != 0:
        raise SystemExit(f"orch {' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return took


def shipped_bytes(layout: LabLayout, host) -> int:
    """Bytes the host's link carried towards it (tc counts what left the machine's veth end)."""
    out = subprocess.run(["tc", "-s", "-j", "qdisc", "show", "dev", host.veth_root], capture_output=True, text=True)
    return sum(q.get("bytes", 0) for q in json.loads(out.stdout or "[]") if q.get("kind") == "tbf")


def image_roots(host) -> list:
    images = host.var_lib_orch / "images"
    return sorted((p / "rootfs" for p in images.iterdir() if (p / "rootfs").is_dir()),
                  key=lambda p: p.stat().st_mtime) if images.is_dir() else []


def rsync(layout: LabLayout, host, src: Path, dest: str) -> tuple:
    ssh = (f"ssh -i {layout.user_key} -o UserKnownHostsFile={layout.known_hosts} -o StrictHostKeyChecking=yes "
           f"-o GlobalKnownHostsFile=/dev/null -o IdentitiesOnly=yes")
    t = time.monotonic()
    proc = subprocess.run(["rsync", "-az", "--numeric-ids", "--stats", "-e", ssh, f"{src}/",
                           f"root@{host.address}:{dest}/"], capture_output=True, text=True)
    took = time.monotonic() - t
    if proc.returncode != 0:
        raise SystemExit(f"rsync failed: {proc.stderr[-1000:]}")
    sent = int(re.search(r"Total bytes sent: ([\d,]+)", proc.stdout).group(1).replace(",", ""))
    return took, sent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", default="2mbit")
    args = ap.parse_args()
    lab = f"bench-edge-{secrets.token_hex(2)}"
    tmp = Path(tempfile.mkdtemp(prefix="orch-edge-"))
    env = dict(os.environ, ORCH_HOME=str(tmp / "home"), PYAPP_GREETING_KEY="bench")
    layout = LabLayout(LabSpec(lab, amd64=1, arm64=0, link_rate=args.rate))
    try:
        directory = project(tmp, lab, args.rate)
        orch(["build", str(directory)], env)
        LabMachine(layout).up(report=False)
        host = layout.hosts()[0]
        print(f"lab {lab}: 1 amd64 host behind {args.rate} (tc tbf, both directions)")

        b0 = shipped_bytes(layout, host)
        first = orch(["apply", str(directory)], env)
        b1 = shipped_bytes(layout, host)
        root1 = image_roots(host)[-1]
        size = sum(f.stat().st_size for f in root1.rglob("*") if f.is_file() and not f.is_symlink())
        print(f"root: {size / 1e6:.1f} MB in {sum(1 for _ in root1.rglob('*'))} entries")
        print(f"first deploy   orch apply   {first:6.1f} s   {(b1 - b0) / 1e6:6.2f} MB on the link")
        r_first, r_sent = rsync(layout, host, root1, "/var/lib/orch/rsync-copy")
        print(f"first deploy   rsync -az    {r_first:6.1f} s   {r_sent / 1e6:6.2f} MB sent"
              f"   orch/rsync {first / r_first:.2f}x")

        orch(["build", str(directory), "--var", "release=2"], env)      # not timed: the deploy is
        b2 = shipped_bytes(layout, host)
        change = orch(["apply", str(directory), "--var", "release=2"], env)
        b3 = shipped_bytes(layout, host)
        print(f"one-file change orch apply  {change:6.1f} s   {(b3 - b2) / 1e6:6.3f} MB on the link")
        root2 = image_roots(host)[-1]
        r_change, r_sent2 = rsync(layout, host, root2, "/var/lib/orch/rsync-copy")
        print(f"one-file change rsync -az   {r_change:6.1f} s   {r_sent2 / 1e6:6.3f} MB sent")
    finally:
        LabMachine(layout).down()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
