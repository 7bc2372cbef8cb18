#!/usr/bin/env python3
"""Container overhead on a lab host: the same work in an orch container and as a host process.

    .venv/bin/python bench/overhead.py [--rounds 5] [--requests 10000] [--concurrency 8]
                                       [--knobs] [--keep]

Deploys two busybox services with `orch apply` to a lab of one amd64 host of its own
(bench-ovh-*, removed afterwards): `ovh` bridged (published 8080:80) and `ovhh` with
`network: host` (its httpd on the host's port 8480), each with a volume at /data. Then, on that
host, each round runs every measure once right beside its baseline (the host process, or the
unchanged path for a knob; which goes first alternates), so a ratio compares runs seconds
apart on a machine whose load moves. Host runs use the very busybox binary of the image (copied out of the
container), so a figure compares the same program:
- cpu:  `busybox awk` arithmetic (one process, no system calls) and `busybox head -c 300 MB
        /dev/zero | busybox sha256sum` (two processes and a pipe), in the container through
        `crun exec` (its cgroups, seccomp filter and namespaces) and as a host process;
- disk: 256 MiB written with `busybox dd conv=fsync` to the container's volume and to a
        directory beside it on the same file system (both printed);
- http: requests/s of `ab` (apache2-utils; a new connection per request, 1 KiB file) to
        busybox httpd: a host process, the `network: host` container, and the bridged
        container by its published port (nftables DNAT) and by its own address, once with the
        client on the host itself (loopback) and once from outside the host (the lab bridge).
With `--knobs`, bridged-path settings are switched on the lab host and each is measured
against the unchanged path in the same round (published port, client outside): GRO on the
veth, txqueuelen, the bridge table's isolation rules, and br_netfilter's ip hooks for bridged
frames. With `--profile` (Debian's linux-perf), `perf record` samples where each request's
kernel time goes, by part of the path, for the host process, `network: host` and the
published port. Prints medians and the median (min-max) of each round's container/host ratio; cpu and disk
work also its cpu time (user + system, from busybox time), which a busy machine's scheduler
does not distort as it does wall time. Ratios (1.00 = no overhead; for req/s
higher is better). Figures, not pass/fail.
"""
from __future__ import annotations

import argparse
import os
import re
import secrets
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import make_lab, remove_lab  # noqa: E402

SERVICES = """\
kind: Fleet
name: {lab}
lab: {{hosts: 1, arm64: 0}}
---
kind: Service
name: ovh
image: &image
  from: {{debian: bookworm, packages: [busybox-static]}}
  platforms: [linux/amd64]
  steps:
    - copy: {{src: www, dest: /srv/www}}
  cmd: [/bin/busybox, httpd, -f, -p, "80", -h, /srv/www]
deploy:
  ports: ["8080:80"]
  volumes: ["ovhdata:/data"]
  health: {{http: /, port: 80, interval: 1s, timeout: 2s, retries: 5}}
---
kind: Service
name: ovhh
image:
  from: {{debian: bookworm, packages: [busybox-static]}}
  platforms: [linux/amd64]
  steps:
    - copy: {{src: www, dest: /srv/www}}
  cmd: [/bin/busybox, httpd, -f, -p, "8480", -h, /srv/www]
deploy:
  network: host
  ports: ["8480:8480"]
  volumes: ["ovhhdata:/data"]
  health: {{http: /, port: 8480, interval: 1s, timeout: 2s, retries: 5}}
"""
BENCH = "/var/lib/orch/bench-host"
AWK = "{bb} awk 'BEGIN {{ for (i = 0; i < 6000000; i++) s += i * i; print s }}'"
PIPE = "{bb} head -c 300000000 /dev/zero | {bb} sha256sum"
DISK = "{bb} dd if=/dev/zero of={dir}/ovh.bin bs=1M count=256 conv=fsync 2>/dev/null && {bb} rm {dir}/ovh.bin"
RUNTIME = "crun --root /run/orch/crun"   # a plain lab host runs crun (orchestrator/lab/hostinit.py)


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

    def timed(self, prefix, bb: str, script: str, warm: bool = False):
        """(wall seconds, cpu seconds: user + system of the work and its children), measured
        by busybox's own ``time`` on the side the work runs (host or container). ``warm``: the
        work runs once untimed first (in this VM, the first 256 MiB of page cache after other
        work costs 0.4 s more system time on whichever side comes first)."""
        q = shlex.quote(script)
        # sync first: the machine's dirty pages are not this work's to write back
        inner = (f"{bb} sh -c {q} >/dev/null 2>&1; " if warm else "") + \
            f"sync; {bb} time -f '%e %U %S' {bb} sh -c {q} 2>&1 >/dev/null"
        out = self.sh(shlex.join(list(prefix) + [bb, "sh", "-c", inner])).split()
        wall, user, system = (float(x) for x in out[-3:])
        return wall, user + system


def ab_rps(out: str) -> float:
    return float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1))


def spread(v) -> str:
    return f"{statistics.median(v):.3f} ({min(v):.3f}-{max(v):.3f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--knobs", action="store_true", help="also measure bridged-path settings")
    ap.add_argument("--only", default="", help="comma-separated measure groups: cpu,disk,http")
    ap.add_argument("--keep", action="store_true", help="leave the lab up (prints its name)")
    ap.add_argument("--profile", action="store_true",
                    help="where the kernel spends each request (perf, client outside): host "
                         "process, network: host and the published port")
    args = ap.parse_args()
    groups = set((args.only or "cpu,disk,http").split(","))
    name = f"bench-ovh-{secrets.token_hex(2)}"
    tmp = Path(tempfile.mkdtemp(prefix="orch-bench-ovh-"))
    os.environ["ORCH_HOME"] = str(tmp / "home")
    project = tmp / "manifests"
    (project / "www").mkdir(parents=True)
    (project / "www" / "index.html").write_text("x" * 1023 + "\n")
    (project / "ovh.yaml").write_text(SERVICES.format(lab=name))
    lab = make_lab(name, amd64=1, arm64=0)
    try:
        deploy(project)
        h = Host(lab, lab.hosts[0])
        addr = lab.hosts[0].address
        ids = {c.rsplit("-", 2)[-2]: c for c in h.sh(f"{RUNTIME} list -q").split()}
        bridged = shlex.split(f"{RUNTIME} exec {ids['ovh']}")
        hostnet = shlex.split(f"{RUNTIME} exec {ids['ovhh']}")
        ip = re.search(r"inet (\d+\.\d+\.\d+\.\d+)",
                       h.sh(f"{RUNTIME} exec {ids['ovh']} busybox ip -4 addr show eth0")).group(1)
        bb = f"{BENCH}/busybox"
        h.sh(f"mkdir -p {BENCH}/www && {RUNTIME} exec {ids['ovh']} busybox cat /bin/busybox > {bb} "
             f"&& chmod 755 {bb} && printf '%01023d\\n' 0 > {BENCH}/www/index.html")
        h.sh(f"{bb} start-stop-daemon -S -b -m -p /run/bench-httpd.pid -x {bb} -- "
             f"httpd -f -p 9080 -h {BENCH}/www")
        vol = "/var/lib/orch/volumes/_services/ovh/ovhdata"
        print(f"lab host {lab.hosts[0].name} ({lab.hosts[0].platform}), {args.rounds} interleaved "
              f"rounds; uptime: {h.sh('cat /proc/loadavg').strip()}")
        print("  disk targets: " + h.sh(f"stat -f -c '%T' {BENCH} {vol} | tr '\\n' ' '") + "("
              + h.sh(f"df --output=source {BENCH} {vol} | tail -n +2 | tr '\\n' ' '").strip() + ")")
        veth = h.sh("ip -o link show master orch0 | awk -F': ' '{print $2}' | cut -d@ -f1").split()
        ab = f"ab -q -n {args.requests} -c {args.concurrency}"

        def rps_in(url: str) -> float:
            return ab_rps(h.sh(f"{ab} {url}"))

        def rps_out(url: str) -> float:      # the machine's side of the lab bridge
            p = subprocess.run(shlex.split(f"{ab} {url}"), capture_output=True, text=True,
                               timeout=600)
            if p.returncode:
                raise SystemExit(f"ab {url} failed: {p.stderr}")
            return ab_rps(p.stdout)

        groups_run = []     # (base name, base fn, [(name, fn), ...]): each beside its base
        work = []           # (name, script) run on both sides
        if "cpu" in groups:
            work += [("cpu awk", AWK), ("cpu pipe", PIPE)]
        if "disk" in groups:
            work += [("disk", DISK)]
        for key, script in work:
            run_on = lambda p, b, d, s=script, w=key == "disk": \
                lambda: h.timed(p, b, s.format(bb=b, dir=d), warm=w)  # noqa: E731
            groups_run.append((f"{key} host", run_on([], bb, BENCH),
                               [(f"{key} container", run_on(bridged, "busybox", "/data"))]))
        if "http" in groups:
            groups_run += [
                ("http in host", lambda: rps_in("http://127.0.0.1:9080/index.html"), [
                    ("http in network: host", lambda: rps_in("http://127.0.0.1:8480/index.html")),
                    ("http in published port", lambda: rps_in("http://127.0.0.1:8080/index.html")),
                    ("http in container address", lambda: rps_in(f"http://{ip}:80/index.html"))]),
                ("http out host", lambda: rps_out(f"http://{addr}:9080/index.html"), [
                    ("http out network: host", lambda: rps_out(f"http://{addr}:8480/index.html")),
                    ("http out published port", lambda: rps_out(f"http://{addr}:8080/index.html"))]),
            ]
        if args.knobs:
            base = lambda: rps_out(f"http://{addr}:8080/index.html")  # noqa: E731
            groups_run.append(("knob none (published, outside)", base, knob_measures(h, veth, base)))
        runs = {}           # name -> values (a timed value is (wall, cpu seconds))
        pairs = {}          # variant name -> [(its value, its base's value measured beside it)]
        for r in range(args.rounds):
            for g, (base_key, base_fn, variants) in enumerate(groups_run):
                for i, (key, fn) in enumerate(variants):
                    if (r + g + i) % 2:
                        v, b = fn(), base_fn()
                    else:
                        b = base_fn()
                        v = fn()
                    runs.setdefault(base_key, []).append(b)
                    runs.setdefault(key, []).append(v)
                    pairs.setdefault(key, []).append((v, b))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
        report(groups_run, runs, pairs, args)
        if args.profile:
            profile({"host process": f"http://{addr}:9080/index.html",
                     "network: host": f"http://{addr}:8480/index.html",
                     "published port": f"http://{addr}:8080/index.html"}, args)
        if args.keep:
            print(f"lab left up: {name} (ORCH_HOME={tmp / 'home'})")
    finally:
        try:
            lab.run(lab.hosts[0], ["sh", "-c", "kill $(cat /run/bench-httpd.pid) 2>/dev/null; true"])
        finally:
            if not args.keep:
                remove_lab(lab)
    return 0


def knob_measures(h: Host, veths, measure):
    """(name, fn) pairs: each fn switches one setting, measures, and switches it back. Each is
    measured beside the unchanged path (the caller's base), so a ratio is of runs seconds apart."""
    def with_setting(on: str, off: str):
        def run() -> float:
            h.sh(on)
            try:
                return measure()
            finally:
                h.sh(off)
        return run

    each = lambda cmd: " && ".join(cmd.format(v=v) for v in veths)  # noqa: E731
    saved = "/run/bench-bridge-table.nft"
    return [
        ("knob veth gro on", with_setting(each("ethtool -K {v} gro on"), each("ethtool -K {v} gro off"))),
        ("knob veth gso+tso off", with_setting(each("ethtool -K {v} gso off tso off"),
                                               each("ethtool -K {v} gso on tso on"))),
        ("knob veth txqueuelen 10000", with_setting(each("ip link set {v} txqueuelen 10000"),
                                                    each("ip link set {v} txqueuelen 1000"))),
        ("knob no bridge isolation table", with_setting(
            f"nft list table bridge orch > {saved} && nft delete table bridge orch",
            f"nft -f {saved}")),
        ("knob forward: established first", with_setting(
            "nft insert rule ip orch forward ct state established,related accept comment bench",
            "nft delete rule ip orch forward handle $(nft -a list chain ip orch forward "
            "| awk '/comment \"bench\"/ {print $NF}')")),
        ("knob br_netfilter off", with_setting(
            "sysctl -qw net.bridge.bridge-nf-call-iptables=0",
            "sysctl -qw net.bridge.bridge-nf-call-iptables=1")),
    ]


# kernel symbols by the part of the path they belong to (first match wins)
PARTS = [
    ("VM: irq-enable points (steal)", r"^_raw_spin_unlock_irq|^finish_task_switch"),
    ("netfilter: conntrack", r"conntrack|^nf_ct_|^__nf_ct|^nf_confirm|hash_conntrack"),
    ("netfilter: nat", r"^nf_nat|^nf_xfrm|masq"),
    ("netfilter: nft rules", r"^nft_|nf_tables"),
    ("netfilter: hooks, br_netfilter", r"^nf_|^br_nf|^ip_sabotage"),
    ("bridge", r"^br_|^__br_"),
    ("veth", r"veth"),
    ("routing (fib)", r"fib|^ip_route|^rt_|^dst_"),
    ("ip, devices, softirq", r"^ip_|^__ip|^ipv4|^__dev_|^dev_|netif|napi|^neigh|^eth_|process_backlog|"
                             r"^net_rx|softirq|^skb|^__skb|^__alloc_skb|^kfree_skb|^consume_skb|^inet_"),
    ("tcp, sockets", r"tcp|^sk_|^__sk_|^sock_|^__sock|inet_csk|^reqsk|^__inet"),
    ("fork, exit, memory", r"page|^pte|^__pte|^___pte|fork|exit|vma|folio|rmap|lru|memcg|zap|unmap|"
                           r"^mm|_mm_|^free_|alloc|kmem|slab|kmalloc|copy_p|tlb|mmap|anon"),
]


def profile(urls, args) -> None:
    """perf samples (cpu-clock, 4 kHz, all CPUs) per 1000 requests of the processes that serve
    and fetch (ab, busybox, ksoftirqd), by the part of the kernel they fall in."""
    n = max(args.requests, 20000)
    table = {}
    for label, url in urls.items():
        data = f"/tmp/orch-bench-perf-{os.getpid()}.data"
        subprocess.run(["perf", "record", "-q", "-a", "-e", "cpu-clock", "-F", "4000", "-o", data,
                        "--", "ab", "-q", "-n", str(n), "-c", str(args.concurrency), url],
                       check=True, capture_output=True, timeout=900)
        out = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort",
                              "sym", "--comms", "ab,busybox,ksoftirqd/0,ksoftirqd/1", "-F",
                              "sample,sym"], capture_output=True, text=True, check=True).stdout
        os.unlink(data)
        parts = {}
        for line in out.splitlines():
            m = re.match(r"\s+(\d+)\s+\[(.)\]\s+(\S+)", line)
            if not m:
                continue
            part = "user space" if m.group(2) == "." else next(
                (k for k, rx in PARTS if re.search(rx, m.group(3))), "kernel: other")
            parts[part] = parts.get(part, 0) + int(m.group(1)) * 1000 / n
        table[label] = parts
    names = [k for k, _ in PARTS] + ["kernel: other", "user space"]
    print(f"  where each request goes (perf samples at 4 kHz per 1000 requests, {n} requests, client outside):")
    print(f"    {'':<32}" + "".join(f"{label:>16}" for label in table))
    for part in names + ["total"]:
        vals = [sum(t.values()) if part == "total" else t.get(part, 0.0) for t in table.values()]
        print(f"    {part:<32}" + "".join(f"{v:>16.1f}" for v in vals))


def report(groups_run, runs, pairs, args) -> None:
    def med(key: str, i=None) -> float:
        return statistics.median(x if i is None else x[i] for x in runs[key])

    def ratio(key: str, i=None) -> str:
        return spread([(v if i is None else v[i]) / (b if i is None else b[i]) for v, b in pairs[key]])

    labels = {"cpu awk": "cpu awk arithmetic (1 process)", "cpu pipe": "cpu head | sha256sum, 300 MB",
              "disk": "disk 256 MiB dd, fsync (volume)"}
    for base, _, variants in groups_run:
        if base.endswith(" host") and base[:-5] in labels:
            kind, c = base[:-5], variants[0][0]
            best = min(x[0] for x in runs[c]) / min(x[0] for x in runs[base])
            print(f"  {labels[kind]:<32} wall: host {med(base, 0):.2f} s, container {med(c, 0):.2f} s, "
                  f"ratio {ratio(c, 0)}, best/best {best:.3f}; cpu time: host {med(base, 1):.2f} s, "
                  f"container {med(c, 1):.2f} s, ratio {ratio(c, 1)}")
        elif base.startswith("http "):
            where = "client on the host (loopback)" if base.startswith("http in") else \
                "client outside (lab bridge)"
            print(f"  http (1 KiB, ab -c {args.concurrency}, {where}): host process {med(base):.0f} req/s")
            for key, _ in variants:
                print(f"    {key.split(' ', 2)[2]:<26} {med(key):.0f} req/s   ratio {ratio(key)}")
        else:
            print(f"  bridged knobs (published port, client outside): unchanged {med(base):.0f} req/s")
            for key, _ in variants:
                print(f"    {key[5:]:<30} {med(key):.0f} req/s   vs unchanged beside it {ratio(key)}")


if __name__ == "__main__":
    sys.exit(main())
