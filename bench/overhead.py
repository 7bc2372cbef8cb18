#!/usr/bin/env python3
"""Container overhead on a lab host: the same work in an orch container and as a host process.

    .venv/bin/python bench/overhead.py [--rounds 5] [--requests 20000] [--concurrency 8]

Deploys a busybox httpd service (a volume at /data) with `orch apply` to a lab of one amd64
host of its own (bench-ovh-*, removed afterwards), then, on that host, interleaving container
and host runs each round (the order alternates):
- cpu:  `busybox sha256sum` of 300 MB from /dev/zero (in the container through `runc exec`);
- disk: 256 MiB written with `dd conv=fsync` to the volume / to a directory on the same disk;
- http: requests/s of `ab` (apache2-utils) on the host fetching a 1 KiB file from
  busybox httpd: the container through its published port (nftables DNAT, bridge, veth), the
  container at its own address (bridge and veth, no DNAT), and a host process on loopback.
Prints medians and container/host ratios (1.00 = no overhead; for req/s higher is better).
Figures, not pass/fail. Host networking for containers is not built yet: said, not measured.
"""
from __future__ import annotations

import argparse
import os
import re
import secrets
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import make_lab, remove_lab  # noqa: E402

SERVICE = """\
kind: Fleet
name: {lab}
lab: {{hosts: 1, arm64: 0}}
---
kind: Service
name: ovh
image:
  from: {{debian: bookworm, packages: [busybox-static]}}
  platforms: [linux/amd64]
  steps:
    - copy: {{src: www, dest: /srv/www}}
  cmd: [/bin/busybox, httpd, -f, -p, "80", -h, /srv/www]
deploy:
  ports: ["8080:80"]
  volumes: ["ovhdata:/data"]
  health: {{http: /, port: 80, interval: 1s, timeout: 2s, retries: 5}}
"""
TIMED = ("import subprocess, sys, time; t = time.monotonic(); "
         "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); print(time.monotonic() - t)")
CPU = "head -c 300000000 /dev/zero | busybox sha256sum"
DISK = "busybox dd if=/dev/zero of={dir}/ovh.bin bs=1M count=256 conv=fsync 2>/dev/null && rm {dir}/ovh.bin"


def deploy(directory: Path) -> None:
    from orchestrator.fleet.deploy import apply, observe, prepare
    from orchestrator.transport.ssh import ConnectionPool
    prep = prepare(str(directory), {})
    with ConnectionPool(h.target for h in prep.hosts) as pool:
        report = apply(prep, observe(prep, pool), pool)
    if not report.ok:
        raise SystemExit(f"apply failed: {report}")


class Host:
    def __init__(self, lab, host):
        self.lab, self.host = lab, host

    def sh(self, script: str, timeout: float = 300) -> str:
        code, out, err = self.lab.run(self.host, ["sh", "-c", script], timeout=timeout)
        if code != 0:
            raise SystemExit(f"{script!r} failed ({code}): {err.decode(errors='replace')}")
        return out.decode()

    def timed(self, argv) -> float:
        return float(self.sh(shlex.join(["python3", "-c", TIMED] + list(argv))).strip())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    name = f"bench-ovh-{secrets.token_hex(2)}"
    tmp = Path(tempfile.mkdtemp(prefix="orch-bench-ovh-"))
    os.environ["ORCH_HOME"] = str(tmp / "home")
    project = tmp / "manifests"
    (project / "www").mkdir(parents=True)
    (project / "www" / "index.html").write_text("x" * 1023 + "\n")
    (project / "ovh.yaml").write_text(SERVICE.format(lab=name))
    lab = make_lab(name, amd64=1, arm64=0)
    try:
        deploy(project)
        h = Host(lab, lab.hosts[0])
        runc = "runc --root /run/orch/runc"
        cid = h.sh(f"{runc} list -q").split()[0]
        exec_in = shlex.split(f"{runc} exec {cid}")
        ip = re.search(r"inet (\d+\.\d+\.\d+\.\d+)", h.sh(f"{runc} exec {cid} busybox ip -4 addr show eth0")).group(1)
        h.sh("mkdir -p /var/lib/orch/bench-host/www")
        h.sh("printf '%01023d\\n' 0 > /var/lib/orch/bench-host/www/index.html")
        h.sh("busybox start-stop-daemon -S -b -m -p /run/bench-httpd.pid -x /bin/busybox -- "
             "httpd -f -p 9080 -h /var/lib/orch/bench-host/www")
        ab = f"ab -q -n {args.requests} -c {args.concurrency}"
        runs = {k: [] for k in ("cpu host", "cpu container", "disk host", "disk container", "http host",
                                "http published port", "http container address")}

        def rps(url: str) -> float:
            out = h.sh(f"{ab} {url}")
            return float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1))

        for r in range(args.rounds):
            pairs = [
                ("cpu host", lambda: h.timed(["sh", "-c", CPU])),
                ("cpu container", lambda: h.timed(exec_in + ["busybox", "sh", "-c", CPU])),
                ("disk host", lambda: h.timed(["sh", "-c", DISK.format(dir="/var/lib/orch/bench-host")])),
                ("disk container", lambda: h.timed(exec_in + ["busybox", "sh", "-c", DISK.format(dir="/data")])),
                ("http host", lambda: rps("http://127.0.0.1:9080/index.html")),
                ("http published port", lambda: rps("http://127.0.0.1:8080/index.html")),
                ("http container address", lambda: rps(f"http://{ip}:80/index.html")),
            ]
            for key, fn in (pairs if r % 2 == 0 else list(reversed(pairs))):
                runs[key].append(fn())
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
        med = {k: statistics.median(v) for k, v in runs.items()}
        print(f"lab host {lab.hosts[0].name} ({lab.hosts[0].platform}), {args.rounds} interleaved rounds, medians:")
        print(f"  cpu  (sha256 of 300 MB)   host {med['cpu host']:.2f} s   container {med['cpu container']:.2f} s"
              f"   ratio {med['cpu container'] / med['cpu host']:.3f}")
        print(f"  disk (256 MiB, fsync)     host {med['disk host']:.2f} s   container (volume) "
              f"{med['disk container']:.2f} s   ratio {med['disk container'] / med['disk host']:.3f}")
        base = med["http host"]
        print(f"  http (1 KiB, ab -c {args.concurrency})     host process {base:.0f} req/s")
        for key in ("http published port", "http container address"):
            print(f"    {key:<26} {med[key]:.0f} req/s   ratio {med[key] / base:.3f}")
        print("  host network (deploy: network: host): not implemented yet, not measured")
    finally:
        try:
            lab.run(lab.hosts[0], ["sh", "-c", "kill $(cat /run/bench-httpd.pid) 2>/dev/null; true"])
        finally:
            remove_lab(lab)
    return 0


if __name__ == "__main__":
    sys.exit(main())
