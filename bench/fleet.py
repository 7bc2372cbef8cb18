#!/usr/bin/env python3
"""Fleet figures for `orch apply` on lab hosts (prints numbers; not a test).

    .venv/bin/python bench/fleet.py [--sizes 5,10,20] [--rollout-hosts 10] [--blob-mb 200]

1. full rollout of the default web service to `--rollout-hosts` fresh hosts (canary 1, then
   waves of 25%), wall time of `orch apply`;
2. no-op `orch apply` wall time (the whole CLI, median of 3) on 5, 10, 20 hosts;
3. bytes shipped per host after a one-file change vs `docker save | gzip` of the same image
   (the docker-archive is written by skopeo, byte-for-byte what `docker save` makes);
4. blob transfer throughput over the agent's raw channel vs OpenSSH `scp` of the same file.

Every lab it makes is named bench-fleet-* and removed afterwards.
"""
from __future__ import annotations

import argparse
import gzip
import os
import shutil
import statistics
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


def project(tmp: Path, lab: str, hosts: int) -> Path:
    d = tmp / f"manifests-{lab}"
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(REPO / "manifests", d)
    (d / "fleet.yaml").write_text(f"kind: Fleet\nname: {lab}\nlab: {{hosts: {hosts}, arm64: 0}}\n")
    text = (d / "hello.yaml").read_text()
    start = text.index("strategy:")
    (d / "hello.yaml").write_text(text[:start] + 'strategy: {canary: 1, max_parallel: "25%", monitor: 0s, '
                                  'on_failure: rollback}\n')
    return d


def orch_apply(directory: Path, env) -> float:
    t = time.monotonic()
    subprocess.run(ORCH + ["apply", str(directory)], check=True, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, cwd=REPO)
    return time.monotonic() - t


def down(lab: str) -> None:
    LabMachine(LabLayout(LabSpec(lab))).down()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="5,10,20")
    ap.add_argument("--rollout-hosts", type=int, default=10)
    ap.add_argument("--blob-mb", type=int, default=200)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="orch-bench-"))
    env = dict(os.environ, ORCH_HOME=str(tmp / "home"), PYTHONPATH=str(REPO))
    try:
        # 1. full rollout
        lab = "bench-fleet-r"
        d = project(tmp, lab, args.rollout_hosts)
        subprocess.run(ORCH + ["build", str(d)], check=True, env=env, stdout=subprocess.DEVNULL, cwd=REPO)
        LabMachine(LabLayout(LabSpec(lab, args.rollout_hosts, 0))).up()
        took = orch_apply(d, env)
        print(f"full rollout, {args.rollout_hosts} hosts (canary 1, waves of 25%, images prebuilt): {took:.2f} s")

        # 3. one-file change: bytes shipped vs docker save | gzip
        css = d / "hello" / "www" / "style.css"
        css.write_text(css.read_text() + "\n/* bench change */\n")
        out = subprocess.run(ORCH + ["apply", str(d), "--json"], check=True, env=env, capture_output=True,
                             cwd=REPO).stdout
        import json
        shipped = json.loads(out)["shipped"]
        per_host = statistics.median(s["bytes"] for s in shipped.values())
        oci = tmp / "oci"
        subprocess.run(ORCH + ["build", str(d), "--out", str(oci), "--platform", "linux/amd64"], check=True,
                       env=env, stdout=subprocess.DEVNULL, cwd=REPO)
        archive = tmp / "hello.docker.tar"
        subprocess.run(["skopeo", "copy", "--quiet", "--override-arch", "amd64", "oci:" + str(oci) + ":hello",
                        f"docker-archive:{archive}:hello:latest"], check=True)
        gz = len(gzip.compress(archive.read_bytes(), 6))
        print(f"one-file change: {per_host:.0f} bytes shipped per host; docker save | gzip of the image: "
              f"{gz} bytes ({gz / max(per_host, 1):.0f}x more)")
        down(lab)

        # 2. no-op apply at each size
        for n in [int(x) for x in args.sizes.split(",")]:
            lab = f"bench-fleet-{n}"
            d = project(tmp, lab, n)
            LabMachine(LabLayout(LabSpec(lab, n, 0))).up()
            orch_apply(d, env)
            runs = [orch_apply(d, env) for _ in range(3)]
            print(f"no-op apply, {n:>2} hosts: median {statistics.median(runs):.2f} s "
                  f"(runs: {', '.join(f'{r:.2f}' for r in runs)})")
            down(lab)

        # 4. throughput
        throughput(tmp, args.blob_mb)
    finally:
        for name in [f"bench-fleet-{x}" for x in ["r", "t"] + args.sizes.split(",")]:
            down(name)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def throughput(tmp: Path, mb: int) -> None:
    from orchestrator.agent.bundle import build_agent_pyz
    from orchestrator.agent.install import install_agent_and_serve
    from orchestrator.lab.fleet import lab_hosts
    from orchestrator.transport.shipper import reconnecting_client, ship_blobs
    from orchestrator.transport.ssh import ConnectionPool
    from orchestrator.image.store import Store

    layout = LabLayout(LabSpec("bench-fleet-t", 1, 0))
    LabMachine(layout).up()
    host = lab_hosts(layout)[0]
    store = Store(str(tmp / "tstore")).ensure()
    src = tmp / "blob.bin"
    with open(src, "wb") as f:
        for _ in range(mb):
            f.write(os.urandom(1 << 20))
    with open(src, "rb") as f:
        digest, size = store.put_stream(f)
    pyz, agent_digest = build_agent_pyz(str(tmp))
    with ConnectionPool([host.target]) as pool:
        client = install_agent_and_serve(pool.get(host.name), str(pyz), agent_digest)
        t = time.monotonic()
        ship_blobs(reconnecting_client(pool, host.name, client.path), [(digest, size)], store.open_blob)
        orch_s = time.monotonic() - t
    t = time.monotonic()
    subprocess.run(["scp", "-q", "-i", host.key_path, "-o", f"UserKnownHostsFile={host.known_hosts_path}",
                    "-o", "StrictHostKeyChecking=yes", str(src), f"root@{host.address}:/var/lib/orch/scp.bin"],
                   check=True)
    scp_s = time.monotonic() - t
    print(f"transfer of {mb} MiB: orch {size / orch_s / 1e6:.0f} MB/s (verified on receipt), "
          f"scp {size / scp_s / 1e6:.0f} MB/s, ratio {scp_s / orch_s:.2f}")
    LabMachine(layout).down()


if __name__ == "__main__":
    sys.exit(main())
