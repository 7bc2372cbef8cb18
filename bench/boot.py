#!/usr/bin/env python3
"""Booted lab hosts: boot time and recovery after a power cut (prints numbers; not a test).

    .venv/bin/python bench/boot.py [--rounds 5] [--kinds booted,bullseye,booted_arm64,booted_armv7]

On a lab of one host of each kind (systemd as PID 1, roots made once; the arm ones run systemd,
sshd, python3, the agent and the containers under qemu-user):
1. boot: from `orch lab boot` (after a power cut, no service) until sshd answers;
2. recovery while idle: two services deployed through the agent unit orch installs, a power cut,
   then from `orch lab boot` until both answer HTTP again (no orch command in between);
3. recovery mid-swap: the same with the cut while a blue/green swap of both services is in its
   monitor window.
Median and max of `--rounds` rounds per host. The lab is named bench-boot-* and removed afterwards.
"""
from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.agent.bundle import build_agent_pyz  # noqa: E402
from orchestrator.agent.client import agent_path  # noqa: E402
from orchestrator.agent.install import install_agent_and_serve  # noqa: E402
from orchestrator.lab import faults  # noqa: E402
from orchestrator.lab.machine import LabMachine  # noqa: E402
from tests.conftest import Lab, make_lab, remove_lab  # noqa: E402
from tests.runtime import imagekit as ik  # noqa: E402

PORTS = {"web": 8080, "api": 8081}


def busybox(platform: str) -> str:
    """A static busybox for `platform` (the test suite's cache, made like its fixture does)."""
    import subprocess
    import tarfile
    from orchestrator.lab.roots import debian_mirror
    from runtime import platforms
    arch = platforms.BY_NAME[platform].debian
    cached = Path(os.environ.get("ORCH_TEST_CACHE", Path.home() / ".cache" / "orch-test")) / f"busybox-{arch}"
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as work:
            tar_path = Path(work) / "root.tar"
            subprocess.run(["mmdebstrap", "--quiet", "--variant=extract", f"--arch={arch}", "--include=busybox-static",
                            "bookworm", str(tar_path), f"deb {debian_mirror()} bookworm main"], check=True)
            with tarfile.open(tar_path) as tar:
                tmp = cached.with_suffix(".tmp")
                tmp.write_bytes(tar.extractfile(tar.getmember("./bin/busybox")).read())
            tmp.chmod(0o755)
            tmp.replace(cached)
    return str(cached)


def serving(address: str) -> dict:
    out = {}
    for svc, port in PORTS.items():
        try:
            out[svc] = ik.hammer_get(address, port, timeout=0.5)
        except OSError:
            pass
    return out


def until_serving(address: str, limit: float = 300.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if len(serving(address)) == len(PORTS):
            return time.monotonic() - start
        time.sleep(0.05)
    raise SystemExit(f"{address}: not serving {limit}s after boot")


def cut_and_boot(lab: Lab, name: str, services: bool) -> float:
    """Seconds from `lab boot` until sshd answers, or until every service answers."""
    machine, host = LabMachine(lab.layout), lab.layout.host(name)
    faults.run_power_cut(machine, host)
    start = time.monotonic()
    faults.run_boot(machine, host)
    if services:
        until_serving(host.address)
    took = time.monotonic() - start
    lab.pool.get(name).close()          # its session died with the host
    return took


def swap(agent, imgs, v) -> None:
    """A blue/green swap of both services with a long monitor window (the host dies under it)."""
    try:
        agent.apply({svc: (imgs[(svc, v)], ik.deploy_spec(port=p, monitor=5.0, drain=0.1))
                     for svc, p in PORTS.items()})
    except Exception:  # noqa: BLE001 - the power cut ends its session
        pass


def stats(xs) -> str:
    return f"median {statistics.median(xs):5.1f} s   max {max(xs):5.1f} s   (n={len(xs)})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--kinds", default="booted,bullseye,booted_arm64,booted_armv7",
                    help="booted host kinds, one host each (orch lab up's --booted, --bullseye, ...)")
    args = ap.parse_args()
    name = f"bench-boot-{secrets.token_hex(2)}"
    kinds = args.kinds.split(",")
    t = time.monotonic()
    lab = make_lab(name, amd64=0, arm64=0, **{k: 1 for k in kinds})
    work = tempfile.TemporaryDirectory(prefix="orch-boot-")
    print(f"lab {name} up with {len(kinds)} booted hosts in {time.monotonic() - t:.1f} s (roots already made)")
    try:
        for h in lab.hosts:
            boots = [cut_and_boot(lab, h.name, services=False) for _ in range(args.rounds)]
            print(f"{h.name:<15} boot after power cut     {stats(boots)}")
        pyz, digest = build_agent_pyz(Path(work.name))
        for h in lab.hosts:
            base = ik.busybox_layer(busybox(h.platform))
            imgs = {(svc, v): ik.make_image({h.platform: [base, ik.tar_bytes([
                ik.dir_entry("www"), ik.file_entry("www/index.html", f"{svc} v{v}".encode())])]})
                for svc in PORTS for v in range(2)}
            install_agent_and_serve(lab.pool.get(h.name), str(pyz), digest)      # the unit, as apply does
            agent = ik.Agent(lambda argv, input, timeout, h=h: lab.run(h, argv, input, timeout),
                             ["python3", agent_path(digest)])
            for img in imgs.values():
                agent.ship(img)
            rc, body = agent.apply({svc: (imgs[(svc, 0)], ik.deploy_spec(port=p, monitor=0.3, drain=0.1))
                                    for svc, p in PORTS.items()})
            assert rc == 0, body
            idle = [cut_and_boot(lab, h.name, services=True) for _ in range(args.rounds)]
            print(f"{h.name:<15} recovery, idle           {stats(idle)}")
            mid = []
            for r in range(args.rounds):
                v = (r + 1) % 2
                th = threading.Thread(daemon=True, target=swap, args=(agent, imgs, v))
                th.start()
                deadline = time.monotonic() + 120
                want = f"v{v}".encode()
                while time.monotonic() < deadline and not any(want in b for b in serving(h.address).values()):
                    time.sleep(0.05)
                mid.append(cut_and_boot(lab, h.name, services=True))
                th.join(1)
                agent.call("unlock", req={"token": "", "force": True})    # the cut apply's lease
            print(f"{h.name:<15} recovery, mid-swap       {stats(mid)}")
    finally:
        remove_lab(lab)
        work.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
