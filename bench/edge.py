#!/usr/bin/env python3
"""Edge figures: a deploy over a slow lab link next to `rsync -az` of the same root (prints
numbers; not a test).

    .venv/bin/python bench/edge.py [--rate 2mbit] [--example-strategy]

On a lab of one amd64 host whose link is throttled to `--rate` (tc tbf, both directions):
1. first deploy of examples/python-app (amd64 only): wall time of `orch apply` (agent upload,
   layers, unpack, start, health) and the bytes it shipped;
2. `rsync -az` over SSH of the root that deploy unpacked on the host, to an empty directory
   on the same host over the same link: wall time and bytes sent;
3. a one-file change (`--var release=2`: the config template), built first: `orch apply` again
   (its time includes the new release's health check), and rsync of the new root onto the
   first copy;
4. a change inside the base layer (one more Debian package, `--package`, in the image's
   `from:`; the base layer is rebuilt): `orch apply`, rsync, and the size of the files that
   changed, each compressed alone (the target: orch's bytes under 2x that).
As in bench/peers.py, the example's strategy is set to `monitor: 0s` and `drain: 0s`: the
figures compare moving and starting a release with copying a root, and the example's own
watch window (monitor 5 s: orch reports ok only once the new release has run that long, on a
first deploy too) would add its length to every orch figure. `--example-strategy` keeps the
example's strategy as it is.
A lab fleet with a `link_rate` sends layers as xz recipes (fleet `wire: auto`); each figure is
the bytes the host's link carried (tc), and for rsync its own payload count too.

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


def project(tmp: Path, lab: str, rate: str, keep_strategy: bool) -> Path:
    d = tmp / "python-app"
    shutil.copytree(REPO / "examples" / "python-app", d)
    text = (d / "app.yaml").read_text()
    text = re.sub(r"(?m)^lab: .*$", f"lab: {{hosts: 1, arm64: 0, armv7: 0, link_rate: {rate}}}", text)
    text = re.sub(r"(?m)^name: pylab$", f"name: {lab}", text)
    text = text.replace("platforms: [linux/amd64, linux/arm64, linux/arm/v7]", "platforms: [linux/amd64]")
    if not keep_strategy:
        text = re.sub(r"(?m)^  drain: .*$", "  drain: 0s", text)
        text = re.sub(r"(?m)^(  strategy: .*)monitor: [^,}]+", r"\1monitor: 0s", text)
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


def merged_root(host, into: Path) -> Path:
    """The root the host's newest image mounts, copied here from its layer store (the same
    files a container sees), as the source of the rsync side."""
    from runtime import layers as layer_store, unpack
    from runtime.layout import Layout
    lay = Layout(str(host.var_lib_orch), "/nonexistent")
    images = [p for p in (host.var_lib_orch / "images").iterdir() if (p / "config.json").exists()]
    newest = max(images, key=lambda p: p.stat().st_mtime)
    ids = json.loads((newest / "layers.json").read_text())
    dest = into / newest.name[:12]
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    layer_store.flatten(lay, ids, str(dest), unpack.Meter(str(into), unpack.Budget()))
    return dest


def changed_files(old: Path, new: Path) -> tuple:
    """Files of ``new`` that ``old`` lacks or holds with other content: count, bytes, and
    their size compressed one by one (gzip -6, what rsync -z would send of them)."""
    import gzip as gz
    n = size = packed = 0
    for f in new.rglob("*"):
        if f.is_symlink() or not f.is_file():
            continue
        o = old / f.relative_to(new)
        data = f.read_bytes()
        if o.is_file() and not o.is_symlink() and o.read_bytes() == data:
            continue
        n += 1
        size += len(data)
        packed += len(gz.compress(data, 6))
    return n, size, packed


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


def measure(name, layout, host, directory, env, var, src_dir: Path) -> tuple:
    """`orch apply` then rsync of the same new root onto the copy, both over the link."""
    argv = ["apply", str(directory)] + (["--var", var] if var else [])
    b0 = shipped_bytes(layout, host)
    took = orch(argv, env)
    b1 = shipped_bytes(layout, host)
    root = merged_root(host, src_dir)
    r_took, r_sent = rsync(layout, host, root, "/var/lib/orch/rsync-copy")
    b2 = shipped_bytes(layout, host)
    print(f"{name:<22} orch apply  {took:6.1f} s  {(b1 - b0) / 1e6:7.3f} MB on the link   |   "
          f"rsync -az  {r_took:6.1f} s  {(b2 - b1) / 1e6:7.3f} MB on the link "
          f"({r_sent / 1e6:.3f} MB payload)   orch/rsync time {took / r_took:.2f}x")
    return root, b1 - b0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", default="2mbit")
    ap.add_argument("--package", default="media-types",
                    help="the package added to the base layer for the in-base change")
    ap.add_argument("--example-strategy", action="store_true",
                    help="keep the example's monitor window and drain (each adds its length)")
    args = ap.parse_args()
    lab = f"bench-edge-{secrets.token_hex(2)}"
    tmp = Path(tempfile.mkdtemp(prefix="orch-edge-"))
    env = dict(os.environ, ORCH_HOME=str(tmp / "home"), PYAPP_GREETING_KEY="bench")
    layout = LabLayout(LabSpec(lab, amd64=1, arm64=0, link_rate=args.rate))
    try:
        directory = project(tmp, lab, args.rate, args.example_strategy)
        orch(["build", str(directory)], env)
        LabMachine(layout).up(report=False)
        host = layout.hosts()[0]
        print(f"lab {lab}: 1 amd64 host behind {args.rate} (tc tbf, both directions)")
        root1, _ = measure("first deploy", layout, host, directory, env, None, tmp / "roots")
        size = sum(f.stat().st_size for f in root1.rglob("*") if f.is_file() and not f.is_symlink())
        print(f"root: {size / 1e6:.1f} MB in {sum(1 for _ in root1.rglob('*'))} entries")

        orch(["build", str(directory), "--var", "release=2"], env)      # not timed
        root2, _ = measure("one-file change", layout, host, directory, env, "release=2", tmp / "roots")

        app = directory / "app.yaml"
        app.write_text(app.read_text().replace("packages: [python3-minimal]",
                                               f"packages: [python3-minimal, {args.package}]"))
        orch(["build", str(directory), "--var", "release=2"], env)      # not timed
        root3, wire = measure("package in the base", layout, host, directory, env, "release=2",
                              tmp / "roots")
        n, raw, packed = changed_files(root2, root3)
        print(f"  the change: {n} files, {raw / 1e6:.3f} MB, {packed / 1e6:.3f} MB compressed one by "
              f"one (gzip -6); orch's link bytes / that = {wire / packed:.2f}x")
    finally:
        LabMachine(layout).down()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
