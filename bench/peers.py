#!/usr/bin/env python3
"""`orch apply` side by side with simpler tools, on the same lab hosts (prints figures; not a test).

    .venv/bin/python bench/peers.py [--rounds 5] [--only one,cold,noop,py,defaults,rss] [--keep]

Each measure runs interleaved with its peer, round by round, and prints min/median/max of both
and the ratio of the medians (orch/peer) beside the target of issue 11:

- one: one-file change, 1 host, the whole `orch apply` vs a docker deploy of the same change:
  `docker build` (on a builder dockerd) + `docker save | gzip | ssh host 'gunzip | docker load'`
  + `ssh host docker run -d` + first HTTP 200 + `ssh host docker rm -f` of the old container;
- cold: cold start of a new service (image already on the host) vs `ssh host docker run -d -p`
  until the first HTTP 200 (the service is added to a project of its own, so the apply starts
  it and removes nothing);
- noop: no-op `orch apply` at 20 hosts, cold (no connection left by an earlier command) and
  warm (right after another orch command), vs `pyinfra INVENTORY exec -- true` and
  `ansible all -m raw -a true` (both cold: a fresh process each round);
- py: one-file change of examples/python-app (amd64 only) on 5 hosts with health gates (canary
  1, then the rest; drain and monitor 0) vs `rsync -az` of its unpacked root to the 5 hosts
  (in parallel);
- defaults: the shipped manifests/ unchanged (drain, monitor, stop timeout), a one-file change
  on the default lab shape (2 amd64 + 1 arm64 hosts), each to a settled fleet (2.5 s after the
  previous one: its old slots have drained and stopped), then each right after the previous;
- rss: the agent's idle `serve` RSS on a host.

The peers are set up by this script, for the bench only (never by `.ci/setup`): the Debian
packages `docker.io` and `rsync` are installed with apt-get when missing, pyinfra and
ansible-core are installed from PyPI into their own venv under ~/.cache/orch-bench/peers-venv.
Each dockerd runs inside a lab host's network and mount namespaces with its own data root and
socket (`--iptables=false --ip-masq=false`, so nothing changes in the machine's own netfilter)
and is stopped by its pid at the end. Only lab addresses are contacted. Labs are named
bpeer-* (``$ORCH_BENCH_PREFIX``-*, so that two people can bench side by side) and removed at the
end (unless --keep).
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.lab.fleet import lab_hosts  # noqa: E402
from orchestrator.lab.layout import LabLayout, LabSpec  # noqa: E402
from orchestrator.lab.machine import LabMachine  # noqa: E402

ORCH = [sys.executable, "-m", "orchestrator.cli"]
CACHE = Path(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))) / "orch-bench"
VENV = CACHE / "peers-venv"
DOCKER_SOCK = "/var/lib/orch/bench-docker.sock"     # inside the lab host (its private /var/lib/orch)
MEASURES = ("one", "cold", "noop", "py", "defaults", "rss")
SETTLE = 2.5                    # the shipped manifests' drain (2 s) and a margin
PREFIX = os.environ.get("ORCH_BENCH_PREFIX", "bpeer")    # lab names: PREFIX-one, PREFIX-20, ...


# ---- setting up the peers -----------------------------------------------------------------
def ensure_peers(need_docker: bool, need_rsync: bool, need_py: bool) -> None:
    missing = [pkg for pkg, tool, want in (("docker.io", "dockerd", need_docker), ("rsync", "rsync", need_rsync))
               if want and not shutil.which(tool)]
    if missing:
        print(f"installing for the bench: {' '.join(missing)} (apt-get)", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, stdout=subprocess.DEVNULL)
    if need_py and not (VENV / "bin" / "pyinfra").exists():
        print(f"installing pyinfra and ansible-core into {VENV} (pip)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "pyinfra", "ansible-core"], check=True)


class Lab:
    """A lab of amd64 (+arm64) hosts made for one measure, with ssh argv to its hosts."""

    def __init__(self, name: str, amd64: int, arm64: int = 0):
        self.layout = LabLayout(LabSpec(name, amd64, arm64))
        self.name = name
        self.spec = (amd64, arm64)

    def up(self) -> "Lab":
        LabMachine(self.layout).up(report=False)
        self.hosts = lab_hosts(self.layout)
        return self

    def down(self) -> None:
        LabMachine(self.layout).down()

    def ssh_opts(self) -> List[str]:
        return ["-F", "/dev/null", "-i", str(self.layout.user_key), "-o", "IdentitiesOnly=yes",
                "-o", f"UserKnownHostsFile={self.layout.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]

    def ssh(self, i: int, *remote: str) -> List[str]:
        return ["ssh", *self.ssh_opts(), f"root@{self.hosts[i].address}", "--", *remote]

    def sshd_pid(self, i: int) -> int:
        return int(self.layout.hosts()[i].pid_file.read_text())

    def fleet_yaml(self) -> str:
        a, r = self.spec
        return f"kind: Fleet\nname: {self.name}\nlab: {{hosts: {a}, arm64: {r}}}\n"


class Dockerd:
    """A dockerd inside a lab host's namespaces (own data root and socket), stopped by its pid."""

    def __init__(self, lab: Lab, i: int, log: Path):
        self.lab, self.i = lab, i
        self.sock_outside = lab.layout.hosts()[i].var_lib_orch / "bench-docker.sock"
        self.cli = ["docker", "--host", f"unix://{self.sock_outside}"]
        self.log = open(log, "ab")
        # `ip netns exec` left the host a /sys without cgroup mounts: the agent's helper adds them
        run(["nsenter", "-t", str(lab.sshd_pid(i)), "-m", "-n", "--", "/usr/bin/python3", "-c",
             "from runtime.cgroups import run_ensure_cgroups; run_ensure_cgroups()"],
            env=dict(os.environ, PYTHONPATH=str(REPO)))
        self.proc = subprocess.Popen(
            ["nsenter", "-t", str(lab.sshd_pid(i)), "-m", "-n", "--", shutil.which("dockerd"),
             "--data-root", "/var/lib/orch/bench-docker", "--exec-root", "/run/bench-docker",
             "--pidfile", "/run/bench-docker.pid", "--host", f"unix://{DOCKER_SOCK}",
             "--iptables=false", "--ip-masq=false"],
            stdout=self.log, stderr=self.log, start_new_session=True)
        deadline = time.monotonic() + 60
        while subprocess.run(self.cli + ["info"], capture_output=True).returncode != 0:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"dockerd did not come up: {log.read_text(errors='replace')[-1500:]}")
            time.sleep(0.2)

    def remote(self, *args: str) -> List[str]:
        """argv of a docker command run on the host over ssh."""
        return self.lab.ssh(self.i, "docker", "--host", f"unix://{DOCKER_SOCK}", *args)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# ---- helpers ----------------------------------------------------------------------------------
def run(argv, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("check", True)
    kw.setdefault("capture_output", True)
    try:
        return subprocess.run(argv, **kw)
    except subprocess.CalledProcessError as exc:
        sys.stderr.write(f"failed: {' '.join(map(str, argv))}\n{(exc.stderr or b'').decode(errors='replace')[-2000:]}"
                         f"{(exc.stdout or b'').decode(errors='replace')[-2000:]}\n")
        raise


def timed(fn: Callable[[], None]) -> float:
    t = time.monotonic()
    fn()
    return time.monotonic() - t


def wait_200(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer 200 in {timeout}s")
        time.sleep(0.005)


def touch_line(path: Path, n: int, comment: str = "/* bench {} */") -> None:
    with open(path, "a") as f:
        f.write("\n" + comment.format(n) + "\n")


def copy_project(src: Path, dest: Path, fleet: str) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest)
    (dest / "fleet.yaml").write_text(fleet)
    return dest


def set_strategy(path: Path, lines: Dict[str, str]) -> None:
    """Replace whole `key: ...` lines of a manifest (deploy settings) by the given ones."""
    out = []
    for line in path.read_text().splitlines():
        key = line.strip().split(":", 1)[0]
        if key in lines and line.startswith("  "):
            out.append(f"  {key}: {lines[key]}")
        else:
            out.append(line)
    path.write_text("\n".join(out) + "\n")


class Orch:
    def __init__(self, env: dict):
        self.env = env
        self.cpu: List[float] = []       # CPU seconds of each timed apply (orch and its ssh children)

    def __call__(self, *args: str) -> subprocess.CompletedProcess:
        return run(ORCH + list(args), env=self.env, cwd=REPO)

    def setup(self, directory: Path) -> None:
        """An untimed apply that brings the fleet to the starting point (retried once: a lab
        host's sshd that has just started may drop the very first connection under load)."""
        try:
            self("apply", str(directory))
        except subprocess.CalledProcessError:
            time.sleep(1)
            self("apply", str(directory))

    def apply(self, directory: Path) -> float:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        took = timed(lambda: self("apply", str(directory)))
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        return took

    def forget_connections(self, lab: "Lab") -> None:
        """Close the SSH connections earlier orch commands left open to this lab's hosts
        (ControlPersist), and only those: other labs' connections may be in use."""
        from orchestrator.transport.ssh import control_options
        for h in lab.hosts:
            opts = control_options(h.target)
            path = next((o.split("=", 1)[1] for o in opts if o.startswith("ControlPath=")), None)
            if path and os.path.exists(path):
                subprocess.run(["ssh", "-F", "/dev/null", "-o", f"ControlPath={path}", "-O", "exit", h.address],
                               capture_output=True)


# ---- report -----------------------------------------------------------------------------------
RESULTS: List[str] = []


def stats(xs: List[float]) -> str:
    return f"min {min(xs):6.2f}  median {statistics.median(xs):6.2f}  max {max(xs):6.2f} s"


def report(what: str, orch: List[float], peer_name: Optional[str] = None, peer: Optional[List[float]] = None,
           target: str = "", cpu: Optional[List[float]] = None) -> None:
    lines = [f"{what}", f"    orch   {stats(orch)}" + (f"   (cpu here: median {statistics.median(cpu):.2f} s)"
                                                        if cpu else "")]
    if peer:
        ratio = statistics.median(orch) / statistics.median(peer)
        lines.append(f"    {peer_name:<6} {stats(peer)}")
        lines.append(f"    ratio orch/peer (medians) {ratio:.2f}   target: {target}")
    elif target:
        lines.append(f"    target: {target}")
    text = "\n".join(lines)
    RESULTS.append(text)
    print(text, flush=True)


# ---- the measures -----------------------------------------------------------------------------
def measure_one_and_cold(tmp: Path, orch: Orch, rounds: int, do_one: bool, do_cold: bool, do_rss: bool,
                         labs: List[Lab]) -> None:
    lab = Lab(PREFIX + "-one", 1)
    builder = Lab(PREFIX + "-build", 1)
    labs += [lab, builder]
    lab.up()
    builder.up()
    d = copy_project(REPO / "manifests", tmp / "one", lab.fleet_yaml())
    set_strategy(d / "hello.yaml", {"drain": "0s", "strategy": "{canary: 1, max_parallel: 1, monitor: 0s, "
                                                             "on_failure: rollback}"})
    orch("build", str(d))
    orch.setup(d)
    host = lab.hosts[0].address
    dockers = []
    try:
        if do_one or do_cold:
            # the same image in docker: orch's build as a docker-archive, loaded on the builder and the host
            oci, archive = tmp / "oci-one", tmp / "hello.docker.tar"
            orch("build", str(d), "--out", str(oci), "--platform", "linux/amd64")
            run(["skopeo", "copy", "--quiet", "--override-arch", "amd64", f"oci:{oci}:hello",
                 f"docker-archive:{archive}:bench/hello:0"])
            target = Dockerd(lab, 0, tmp / "dockerd-target.log")
            dockers.append(target)
            build = Dockerd(builder, 0, tmp / "dockerd-build.log")
            dockers.append(build)
            for dk in (target, build):
                with open(archive, "rb") as f:
                    run(dk.cli + ["load"], stdin=f)
            ctx = tmp / "docker-ctx"
            ctx.mkdir()
            shutil.copy(d / "hello" / "www" / "style.css", ctx / "style.css")
            (ctx / "Dockerfile").write_text("FROM bench/hello:0\nCOPY style.css /srv/www/style.css\n")
        one_orch, one_docker, cold_orch, cold_docker, one_cpu, cold_cpu = [], [], [], [], [], []
        for r in range(rounds):
            if do_one:
                touch_line(d / "hello" / "www" / "style.css", r)
                one_orch.append(orch.apply(d))
                one_cpu.append(orch.cpu[-1])
                touch_line(ctx / "style.css", r)
                one_docker.append(timed(lambda: docker_deploy(target, build, ctx, r, host)))
            if do_cold:
                # a project of its own that gains one service a round (cold0, cold1, ...): each
                # apply starts exactly one new service and removes none (a service dropped from
                # the manifests would be removed in the same command, which docker run never does)
                c = tmp / "cold"
                if r == 0:
                    copy_project(d, c, lab.fleet_yaml() + "project: bench-cold\n")
                    (c / "hello.yaml").rename(c / "hello.yaml.in")
                text = (c / "hello.yaml.in").read_text().replace("name: hello", f"name: cold{r}") \
                    .replace('"8080:80"', f'"{9100 + r}:80"')
                (c / f"cold{r}.yaml").write_text(text)
                # the same image as hello: only the new service's start is timed (build is cached)
                orch("build", str(c))
                cold_orch.append(orch.apply(c))
                cold_cpu.append(orch.cpu[-1])
                wait_200(f"http://{host}:{9100 + r}/", 5)
                cold_docker.append(timed(lambda: (run(target.remote("run", "-d", "--name", f"cold{r}", "-p",
                                                                      f"{9200 + r}:80", "bench/hello:0")),
                                                  wait_200(f"http://{host}:{9200 + r}/"))))
        if do_one:
            report("one-file change, 1 host, whole command", one_orch, "docker", one_docker,
                   "orch < 0.5 s and <= 0.5x docker build+save/gzip/ssh load+run+health+rm", one_cpu)
        if do_cold:
            report("cold start of a new service (image on the host)", cold_orch, "docker", cold_docker,
                   "<= 1.0x ssh + docker run to first 200", cold_cpu)
        if do_rss:
            measure_rss(lab)
    finally:
        for dk in dockers:
            dk.stop()


def docker_deploy(target: Dockerd, build: Dockerd, ctx: Path, r: int, host: str) -> None:
    tag = f"bench/hello:{r + 1}"
    run(build.cli + ["build", "-q", "-t", tag, str(ctx)])
    save = subprocess.Popen(build.cli + ["save", tag], stdout=subprocess.PIPE)
    gz = subprocess.Popen(["gzip", "-c"], stdin=save.stdout, stdout=subprocess.PIPE)
    save.stdout.close()
    run(target.lab.ssh(target.i, "gunzip | docker --host unix://" + DOCKER_SOCK + " load -q"), stdin=gz.stdout)
    gz.stdout.close()
    if save.wait() or gz.wait():
        raise RuntimeError("docker save | gzip failed")
    port = 9000 + (r % 2)
    run(target.remote("run", "-d", "--name", f"app{r}", "-p", f"{port}:80", tag))
    wait_200(f"http://{host}:{port}/")
    if r:
        run(target.remote("rm", "-f", f"app{r - 1}"))


def measure_rss(lab: Lab) -> None:
    netns = lab.layout.hosts()[0].netns
    pids = run(["ip", "netns", "pids", netns]).stdout.decode().split()
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if any(a.endswith(b".pyz") for a in cmd) and b"serve" in cmd:
                status = Path(f"/proc/{pid}/status").read_text()
                rss = {x.split(":")[0]: int(x.split()[1]) for x in status.splitlines()
                       if x.startswith(("VmRSS", "VmHWM"))}
                text = (f"agent idle RSS (serve, pid {pid}): {rss['VmRSS'] / 1024:.1f} MB "
                        f"(peak {rss['VmHWM'] / 1024:.1f} MB)   target: <= 25 MB")
                RESULTS.append(text)
                print(text, flush=True)
                return
        except OSError:
            continue
    print("agent idle RSS: no serve process found", flush=True)


def measure_noop(tmp: Path, orch: Orch, rounds: int, labs: List[Lab]) -> None:
    lab = Lab(PREFIX + "-20", 20)
    labs.append(lab)
    lab.up()
    d = copy_project(REPO / "manifests", tmp / "noop", lab.fleet_yaml())
    set_strategy(d / "hello.yaml", {"drain": "0s", "strategy": '{canary: 1, max_parallel: "100%", monitor: 0s, '
                                                             'on_failure: rollback}'})
    orch("build", str(d))
    orch.setup(d)
    inv = tmp / "inventory.py"
    data = {"ssh_user": "root", "ssh_key": str(lab.layout.user_key),
            "ssh_known_hosts_file": str(lab.layout.known_hosts), "ssh_strict_host_key_checking": "yes"}
    inv.write_text("hosts = " + repr([(h.address, data) for h in lab.hosts]) + "\n")
    ini = tmp / "inventory.ini"
    common = " ".join(f"-o {o}" for o in (f"UserKnownHostsFile={lab.layout.known_hosts}",
                                          "StrictHostKeyChecking=yes", "IdentitiesOnly=yes"))
    ini.write_text("[all]\n" + "".join(f"{h.address}\n" for h in lab.hosts) +
                   f"[all:vars]\nansible_user=root\nansible_ssh_private_key_file={lab.layout.user_key}\n"
                   f"ansible_ssh_common_args='{common}'\n")
    penv = dict(os.environ, ANSIBLE_HOST_KEY_CHECKING="True", ANSIBLE_PYTHON_INTERPRETER="auto_silent")
    cold, warm, pyinfra, ansible, cold_cpu, warm_cpu = [], [], [], [], [], []
    for _ in range(rounds):
        orch.forget_connections(lab)
        cold.append(orch.apply(d))
        cold_cpu.append(orch.cpu[-1])
        warm.append(orch.apply(d))
        warm_cpu.append(orch.cpu[-1])
        pyinfra.append(timed(lambda: run([str(VENV / "bin" / "pyinfra"), "-y", str(inv), "exec", "--", "true"],
                                         env=penv, cwd=tmp)))
        ansible.append(timed(lambda: run([str(VENV / "bin" / "ansible"), "all", "-i", str(ini), "-f", "20",
                                          "-m", "raw", "-a", "true"], env=penv, cwd=tmp)))
    report("no-op apply, 20 hosts, cold", cold, "pyinfra", pyinfra, "<= 1.0x pyinfra exec -- true (cold)", cold_cpu)
    report("no-op apply, 20 hosts, cold", cold, "ansibl", ansible, "(for reference: ansible -m raw -a true)")
    report("no-op apply, 20 hosts, warm (right after another orch command)", warm, target="< 0.3 s", cpu=warm_cpu)


def measure_py(tmp: Path, orch: Orch, rounds: int, labs: List[Lab]) -> None:
    lab = Lab(PREFIX + "-py", 5)
    labs.append(lab)
    lab.up()
    d = copy_project(REPO / "examples" / "python-app", tmp / "py", "")
    (d / "fleet.yaml").unlink()
    app = d / "app.yaml"
    text = app.read_text()
    text = text.replace("name: pylab\nlab: {hosts: 1, arm64: 1, armv7: 1}", f"name: {lab.name}\nlab: {{hosts: 5, arm64: 0}}")
    text = text.replace("platforms: [linux/amd64, linux/arm64, linux/arm/v7]", "platforms: [linux/amd64]")
    app.write_text(text)
    set_strategy(app, {"drain": "0s", "strategy": '{canary: 1, max_parallel: "100%", monitor: 0s, '
                                                 'on_failure: rollback}'})
    orch.env["PYAPP_GREETING_KEY"] = "bench"
    orch("build", str(d))
    orch.setup(d)
    # the peer: the same image's root, unpacked here, rsynced to every host
    oci, single, bundle = tmp / "oci-py", tmp / "oci-py1", tmp / "py-bundle"
    orch("build", str(d), "--out", str(oci), "--platform", "linux/amd64")
    run(["skopeo", "copy", "--quiet", "--override-arch", "amd64", f"oci:{oci}:pyapp", f"oci:{single}:pyapp"])
    run(["umoci", "unpack", "--image", f"{single}:pyapp", str(bundle)])
    root = bundle / "rootfs"
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    ssh = "ssh " + " ".join(lab.ssh_opts())

    def rsync_all() -> None:
        def one(h):
            run(["rsync", "-az", "--delete", "-e", ssh, f"{root}/", f"root@{h.address}:/var/lib/orch/bench-rsync/"])
        with ThreadPoolExecutor(len(lab.hosts)) as ex:
            list(ex.map(one, lab.hosts))

    rsync_all()
    o, p, cpu = [], [], []
    for r in range(rounds):
        touch_line(d / "app" / "server.py", r, "# bench {}")
        o.append(orch.apply(d))
        cpu.append(orch.cpu[-1])
        touch_line(root / "app" / "server.py", r, "# bench {}")
        p.append(timed(rsync_all))
    report(f"one-file change, python-app ({size / 1e6:.0f} MB root), 5 hosts, canary 1 then the rest", o,
           "rsync", p, "<= 1.0x rsync -az of its root to the 5 hosts", cpu)


def measure_defaults(tmp: Path, orch: Orch, rounds: int, labs: List[Lab]) -> None:
    lab = Lab(PREFIX + "-def", 2, 1)
    labs.append(lab)
    lab.up()
    d = copy_project(REPO / "manifests", tmp / "def", lab.fleet_yaml())
    orch("build", str(d))
    orch.setup(d)
    o, cpu, back = [], [], []
    for r in range(rounds):
        # a change to a settled fleet: the previous release's old slot has finished its drain
        # (2 s in the shipped manifests) and stopped. A change made within those 2 s waits for
        # that slot on each host (two slots per service); measured too, after the rounds.
        time.sleep(SETTLE)
        touch_line(d / "hello" / "www" / "style.css", r)
        o.append(orch.apply(d))
        cpu.append(orch.cpu[-1])
    for r in range(rounds):
        touch_line(d / "hello" / "www" / "style.css", rounds + r)
        back.append(orch.apply(d))
    report("shipped manifests/ as they are, one-file change, 3 hosts (2 amd64 + 1 arm64)", o, target="< 2 s",
           cpu=cpu)
    report("the same, each change right after the previous one (waits for its drain)", back)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", default=",".join(MEASURES), help="comma-separated: " + ",".join(MEASURES))
    ap.add_argument("--keep", action="store_true", help="leave the labs up (for profiling)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/peers.py needs root (lab hosts)", file=sys.stderr)
        return 2
    only = set(args.only.split(","))
    unknown = only - set(MEASURES)
    if unknown:
        ap.error(f"unknown measure(s): {', '.join(sorted(unknown))}")
    ensure_peers("one" in only or "cold" in only, "py" in only, "noop" in only)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="orch-bench-peers-"))
    # a store of its own, kept between runs (Debian bases are slow to make the first time);
    # bytecode is cached as on any installed machine (this one sets PYTHONDONTWRITEBYTECODE)
    env = dict(os.environ, ORCH_HOME=str(CACHE / "orch-home"), PYTHONPATH=str(REPO))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    orch = Orch(env)
    labs: List[Lab] = []
    print(f"bench/peers.py --rounds {args.rounds} --only {args.only}   "
          f"({time.strftime('%Y-%m-%d %H:%M:%S')}, load {os.getloadavg()[0]:.1f}, {os.cpu_count()} cpus)", flush=True)
    try:
        if only & {"one", "cold", "rss"}:
            measure_one_and_cold(tmp, orch, args.rounds, "one" in only, "cold" in only, "rss" in only, labs)
        if "noop" in only:
            measure_noop(tmp, orch, args.rounds, labs)
        if "py" in only:
            measure_py(tmp, orch, args.rounds, labs)
        if "defaults" in only:
            measure_defaults(tmp, orch, max(1, min(args.rounds, 3)), labs)
    finally:
        if not args.keep:
            for lab in labs:
                lab.down()
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n== summary ==")
    print("\n".join(RESULTS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
