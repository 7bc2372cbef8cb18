#!/usr/bin/env python3
"""Time a blue/green replace and a cold start by the orch agent, against `docker run`.

    .venv/bin/python bench/swap.py [--rounds 20] [--cold 10] [--no-docker]

Everything runs inside network namespaces this script makes (and removes): the agent (the
zipapp, run by /usr/bin/python3 like on a host) in one, dockerd (Debian's docker.io, started
by hand with its own data root and socket) in another, so nothing in the root namespace
changes. Prints:
- replace: `apply` wall time of a new release (new slot started -> healthy -> switched -> old
  stopped; drain 0, monitor 0), and the swap alone as the agent journals it;
- cold start: `apply` of a new service until it serves (image already on the host), against
  `docker run -d -p` + first HTTP 200 of the same image (imported into docker);
- the idle RSS of the agent's `serve` loop.
Figures, not pass/fail.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.agent.bundle import build_agent_pyz  # noqa: E402
from tests.runtime import imagekit as ik  # noqa: E402

PY = "/usr/bin/python3"


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def line(name, xs):
    return (f"{name:<44} median {statistics.median(xs) * 1000:7.1f} ms   "
            f"p95 {pct(xs, 95) * 1000:7.1f} ms   (n={len(xs)})")


def netns(name):
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)


def journal_swaps(root):
    """(Start begin -> Stop done) and (Start begin -> Switch done) spans from the journal."""
    recs = [json.loads(x) for x in open(os.path.join(root, "state", "journal.log"))]
    swaps, starts = [], []
    t_start = None
    for r in recs:
        if r["step"] == "Start" and r["phase"] == "begin":
            t_start = r["t"]
        elif r["step"] == "Switch" and r["phase"] == "done" and t_start is not None:
            starts.append(r["t"] - t_start)
        elif r["step"] == "Stop" and r["phase"] == "done" and t_start is not None:
            swaps.append(r["t"] - t_start)
            t_start = None
    return swaps, starts


def bench_agent(args, work, base, pages):
    ns = "orch-bench-swap-" + secrets.token_hex(3)
    netns(ns)
    root, run = os.path.join(work, "root"), os.path.join(work, "run")
    pyz, digest = build_agent_pyz(os.path.join(work, "pyz"))
    agent = ik.Agent(ik.local_runner(ns), [PY, str(pyz)], root, run)
    out = {}
    try:
        images = [ik.make_image({"linux/amd64": [base, p]}) for p in pages]
        for img in images:
            agent.ship(img)
        spec = ik.deploy_spec(port=8080, drain=0.0, monitor=0.0)
        rc, body = agent.apply({"web": (images[0], spec)})
        assert rc == 0, body
        walls = []
        for img in images[1:]:
            t = time.monotonic()
            rc, body = agent.apply({"web": (img, spec)})
            walls.append(time.monotonic() - t)
            assert rc == 0 and body["services"]["web"]["ok"], body
        swaps, _ = journal_swaps(root)
        out["replace_wall"] = walls
        out["replace_swap"] = swaps[-len(walls):]
        cold = []
        n0 = len(journal_swaps(root)[1])
        for i in range(args.cold):
            t = time.monotonic()
            rc, body = agent.apply({f"cold{i}": (images[0], ik.deploy_spec(port=9000 + i))})
            cold.append(time.monotonic() - t)
            assert rc == 0 and body["services"][f"cold{i}"]["ok"], body
        out["cold_wall"] = cold
        out["cold_start"] = journal_swaps(root)[1][n0:]
        rc, started = agent.call("serve", "--daemon")
        assert rc == 0, started
        time.sleep(3.0)
        with open(f"/proc/{started['pid']}/status") as f:
            rss = [x for x in f if x.startswith(("VmRSS", "VmHWM"))]
        out["rss"] = {x.split(":")[0]: int(x.split()[1]) for x in rss}
        os.kill(started["pid"], signal.SIGTERM)
        for i in range(args.cold):
            agent.call("remove", f"cold{i}")
        agent.call("remove", "web")
        left = subprocess.run(["runc", "--root", os.path.join(run, "runc"), "list", "-q"],
                              capture_output=True, text=True).stdout.split()
        out["left"] = left
    finally:
        for cid in subprocess.run(["runc", "--root", os.path.join(run, "runc"), "list", "-q"],
                                  capture_output=True, text=True).stdout.split():
            subprocess.run(["runc", "--root", os.path.join(run, "runc"), "delete", "--force",
                            cid], capture_output=True)
        for m in [x.split()[4] for x in open("/proc/self/mountinfo") if work in x.split()[4]]:
            subprocess.run(["umount", "-l", m], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], check=False)
    return out


DOCKER_INNER = r"""
import json, socket, subprocess, sys, time
docker, n = json.loads(sys.argv[1]), sys.argv[2]
def get(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return s.recv(100).startswith(b"HTTP/1.")
    except OSError:
        return False
run_d, serve = [], []
for i in range(int(n)):
    t = time.monotonic()
    subprocess.run(docker + ["run", "-d", "--name", f"c{i}", "-p", f"{9000+i}:80", "orchbench"],
                   check=True, capture_output=True)
    run_d.append(time.monotonic() - t)
    while not get(9000 + i):
        time.sleep(0.002)
    serve.append(time.monotonic() - t)
    subprocess.run(docker + ["rm", "-f", f"c{i}"], capture_output=True)
print(json.dumps({"run_d": run_d, "serve": serve}))
"""


def bench_docker(args, work, base, pages):
    dockerd = shutil.which("dockerd")
    if not dockerd:
        return {"skipped": "docker.io is not installed (apt-get install docker.io)"}
    ns = "orch-bench-docker-" + secrets.token_hex(3)
    netns(ns)
    sock = os.path.join(work, "docker.sock")
    docker = ["docker", "--host", f"unix://{sock}"]
    forward_before = subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True,
                                    text=True).stdout.splitlines()[:1]
    logf = open(os.path.join(work, "dockerd.log"), "wb")
    d = subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", dockerd,
                          "--data-root", os.path.join(work, "docker"),
                          "--exec-root", os.path.join(work, "docker-exec"),
                          "--pidfile", os.path.join(work, "docker.pid"),
                          "--host", f"unix://{sock}"], stdout=logf, stderr=logf,
                         start_new_session=True)
    try:
        end = time.monotonic() + 60
        while subprocess.run(docker + ["info"], capture_output=True).returncode != 0:
            if time.monotonic() > end or d.poll() is not None:
                return {"skipped": "dockerd did not come up; see " + logf.name}
            time.sleep(0.2)
        # the same files as the agent's image: busybox layer + page layer, as one tar
        tar = os.path.join(work, "image.tar")
        import gzip
        with open(tar, "wb") as f:
            f.write(ik.tar_bytes(_merge(gzip.decompress(base), pages[0]), gz=False))
        cmd = json.dumps(ik.HTTPD_CMD)
        subprocess.run(docker + ["import", "--change", f"CMD {cmd}", tar, "orchbench"],
                       check=True, capture_output=True)
        p = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", PY, "-c", DOCKER_INNER,
                            json.dumps(docker), str(args.cold)],
                           capture_output=True, text=True)
        if p.returncode != 0:
            return {"skipped": "docker loop failed: " + p.stderr[-500:]}
        res = json.loads(p.stdout)
        res["version"] = subprocess.run(docker + ["version", "-f", "{{.Server.Version}}"],
                                        capture_output=True, text=True).stdout.strip()
        return res
    finally:
        os.killpg(d.pid, signal.SIGTERM)
        try:
            d.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(d.pid, signal.SIGKILL)
            d.wait()
        logf.close()
        for m in [x.split()[4] for x in open("/proc/self/mountinfo") if work in x.split()[4]]:
            subprocess.run(["umount", "-l", m], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], check=False)
        after = subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True,
                               text=True).stdout.splitlines()[:1]
        if after != forward_before and forward_before:
            policy = forward_before[0].split()[-1]
            subprocess.run(["iptables", "-P", "FORWARD", policy], check=False)


def _merge(base_tar: bytes, page_layer: bytes):
    import io
    import tarfile
    entries = []
    seen = set()
    for blob in (page_layer, base_tar):
        with tarfile.open(fileobj=io.BytesIO(blob)) as tf:
            for m in tf.getmembers():
                if m.name in seen:
                    continue
                seen.add(m.name)
                data = tf.extractfile(m).read() if m.isfile() else None
                entries.append((m, data))
    return sorted(entries, key=lambda e: e[0].name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--cold", type=int, default=10)
    ap.add_argument("--no-docker", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/swap.py needs root (namespaces, runc, nft)", file=sys.stderr)
        return 2
    base = ik.busybox_layer("/bin/busybox")
    pages = [ik.tar_bytes([ik.dir_entry("www"), ik.file_entry("www/index.html",
                                                              f"v{i}\n".encode())])
             for i in range(args.rounds + 1)]
    work = tempfile.mkdtemp(prefix="orch-bench-swap-")
    try:
        a = bench_agent(args, work, base, pages)
        dk = {"skipped": "--no-docker"} if args.no_docker else bench_docker(args, work, base,
                                                                              pages)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"orch agent ({PY}, zipapp), {args.rounds} replaces, {args.cold} cold starts")
    print(line("replace: apply wall (CLI, start->stop old)", a["replace_wall"]))
    print(line("replace: swap in the agent (journal)", a["replace_swap"]))
    print(line("cold start: apply wall until serving", a["cold_wall"]))
    print(line("cold start: in the agent (start->switched)", a["cold_start"]))
    if "skipped" in dk:
        print(f"docker: skipped ({dk['skipped']})")
    else:
        print(f"docker {dk['version']}:")
        print(line("cold start: docker run -d (returns)", dk["run_d"]))
        print(line("cold start: docker run -d until serving", dk["serve"]))
    print(f"agent serve idle RSS: {a['rss'].get('VmRSS', 0) / 1024:.1f} MB "
          f"(peak {a['rss'].get('VmHWM', 0) / 1024:.1f} MB)")
    if a["left"]:
        print(f"WARNING: containers left behind: {a['left']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
