"""Side effects of the lab: namespaces, veths, the bridge, sshd, mounts, teardown.

Every command is an argument list; every process is tracked by pid (never killed by name).
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from orchestrator.errors import LabError
from orchestrator.lab import binfmt, power
from orchestrator.lab.layout import DEFAULT_STATE_ROOT, HostLayout, LabLayout, LabSpec
from orchestrator.lab.render import render_known_hosts_line, render_sshd_config
from orchestrator.tools import find_tool, require_tools

LAB_TOOLS = ("ip", "sshd", "ssh-keygen", "unshare", "nsenter", "mount", "sysctl")
RUNTIME_STATE_DIRS = ("orch/runc", "orch/crun", "runc", "crun")  # under a host's /run


def _run(argv: Sequence[str], *, check: bool = True, input: Optional[bytes] = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), input=input, capture_output=True)
    if check and proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise LabError(f"{' '.join(argv[:4])}... failed: {err or 'exit ' + str(proc.returncode)}")
    return proc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _read_pid(path: Path) -> Optional[int]:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    try:   # `lab up` on a lab that is up (every apply does it) rewrites nothing
        st = path.stat()
        if (st.st_mode & 0o7777) == mode and path.read_text() == text:
            return
    except (OSError, UnicodeDecodeError):
        pass
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def _running(pid: int) -> bool:
    """Alive and not a zombie (a killed sshd whose parent has not reaped it yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _bridge_ready(name: str, gateway: str) -> bool:
    """The lab bridge exists, is up, bypasses netfilter (where br_netfilter is loaded) and has
    the gateway as its address (SIOCGIFADDR: its first IPv4 address)."""
    sysfs = Path("/sys/class/net", name)
    try:
        if not int((sysfs / "flags").read_text(), 16) & 0x1:          # IFF_UP
            return False
        for knob in ("nf_call_iptables", "nf_call_ip6tables", "nf_call_arptables"):
            f = sysfs / "bridge" / knob
            if f.exists() and f.read_text().strip() != "0":
                return False
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            raw = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
    except (OSError, ValueError):
        return False
    return socket.inet_ntoa(raw[20:24]) == gateway


def _netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def _port_open(address: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


class LabMachine:
    """Brings one lab up or down on this machine."""

    def __init__(self, layout: LabLayout, *, python: str = sys.executable):
        self.layout = layout
        self.python = python
        self.tools: Dict[str, str] = {}

    # ---- up -------------------------------------------------------------------------------
    def up(self, *, report: bool = True) -> List[dict]:
        """Make the lab exist and run (idempotent); returns `status()` unless `report` is False."""
        self.need_tools()
        lay = self.layout
        fresh = not lay.record.exists()
        started: List[HostLayout] = []
        try:
            lay.state_dir.mkdir(parents=True, exist_ok=True)
            os.chmod(lay.state_dir, 0o700)
            self._ensure_key(lay.user_key, f"orch-lab-{lay.name}")
            _write_atomic(lay.authorized_keys, lay.user_key.with_suffix(".pub").read_text(), 0o600)
            self._ensure_bridge()
            registered = self._ensure_binfmt()
            wanted = {h.name: h for h in lay.hosts()}
            for stale in self._recorded_hosts():
                if wanted.get(stale.name) != stale:     # gone, or moved (address, veth) by a new shape
                    self._teardown_host(stale)
            # the new shape is recorded before any host starts: `down` then finds every host
            self._write_record(registered)
            for host in lay.hosts():
                if self._ensure_host(host):
                    started.append(host)
            self._write_known_hosts()
            for host in started:    # a host that was already up may be unreachable on purpose (link down)
                self._wait_ssh(host, timeout=power.boot_timeout(host) if host.booted else 10.0)
        except BaseException:
            self._undo_up(started, fresh)
            raise
        return self.status() if report else []

    def ready(self) -> bool:
        """Everything `up` makes is there as it would leave it, read from /sys and /proc without
        running a command: the recorded shape is this one, the bridge is up with its address and
        bridged traffic bypasses netfilter, foreign binaries run (binfmt), every host's sshd runs.
        Commands that only need a lab (`orch apply`) skip `up` when it is (`orch lab up` always
        runs it, and heals what only it checks: the DOCKER-USER/FORWARD accept rule)."""
        lay = self.layout
        rec = self._recorded()
        if rec.get("spec") != asdict(lay.spec) or rec.get("state_root") != str(lay.state_root):
            return False
        if not all(p.exists() for p in (lay.user_key, lay.authorized_keys, lay.known_hosts)):
            return False
        if not _bridge_ready(lay.bridge, lay.gateway):
            return False
        if any(binfmt.registered_with_fix_binary(arch) is None for arch in lay.foreign_qemu()):
            return False
        for host in lay.hosts():
            pid = _read_pid(host.pid_file)
            if not (pid and _running(pid) and _netns_exists(host.netns)):
                return False
        return True

    def _undo_up(self, started: List[HostLayout], fresh: bool) -> None:
        """A failed (or interrupted) `up` takes down what it started: every host it started, and
        the whole lab when there was none before; hosts that were up before it stay up."""
        if fresh:
            self.down()
            return
        for host in started:
            self._teardown_host(host)

    def need_tools(self) -> None:
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network and mount namespaces)", hint="run as root")
        self.tools = require_tools(LAB_TOOLS, "the lab fleet")
        if self.layout.spec.link_rate:
            self.tools["tc"] = find_tool("tc", "--link-rate")

    # ---- one host (orchestrator.lab.faults: power cut, boot, reboot) -------------------------
    def start_host(self, host: HostLayout) -> bool:
        """Boot a host that is off (True), or leave a running one alone (False); waits for sshd."""
        started = self._ensure_host(host)
        if started:
            self._wait_ssh(host, timeout=power.boot_timeout(host) if host.booted else 10.0)
        return started

    def stop_host(self, host: HostLayout) -> None:
        """Every process of the host gone and its network namespace with them; its disk stays."""
        self._teardown_host(host)

    def _ensure_key(self, path: Path, comment: str) -> None:
        if path.exists() and path.with_suffix(".pub").exists():
            return
        for p in (path, path.with_suffix(".pub")):
            if p.exists():
                p.unlink()
        _run([self.tools["ssh-keygen"], "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])

    def _ensure_bridge(self) -> None:
        lay, ip = self.layout, self.tools["ip"]
        if not _link_exists(lay.bridge):
            self._refuse_subnet_clash()
            _run([ip, "link", "add", lay.bridge, "type", "bridge"])
        # bridged lab traffic must not pass through iptables/nftables FORWARD (Docker sets it to DROP)
        _run([ip, "link", "set", lay.bridge, "type", "bridge",
              "nf_call_iptables", "0", "nf_call_ip6tables", "0", "nf_call_arptables", "0"], check=False)
        addrs = _run([ip, "-o", "-4", "addr", "show", "dev", lay.bridge]).stdout.decode()
        if f" {lay.gateway}/24 " not in addrs:
            _run([ip, "addr", "add", f"{lay.gateway}/24", "dev", lay.bridge])
        _run([ip, "link", "set", lay.bridge, "up"])
        self._allow_bridged_forwarding()

    def _allow_bridged_forwarding(self) -> None:
        """A Docker engine leaves bridged traffic going through netfilter with FORWARD set to DROP
        (iptables-nft: `table ip filter`). Let lab traffic through there, marked so `down` finds it."""
        nft = shutil.which("nft") or shutil.which("nft", path="/usr/sbin:/sbin")
        if not nft:
            return
        comment = f"orch-lab-{self.layout.name}"
        for chain in ("DOCKER-USER", "FORWARD"):
            listing = _run([nft, "list", "chain", "ip", "filter", chain], check=False)
            if listing.returncode != 0:
                continue
            if comment.encode() not in listing.stdout:
                _run([nft, "insert", "rule", "ip", "filter", chain, "iifname", self.layout.bridge,
                      "oifname", self.layout.bridge, "counter", "accept", "comment", comment])
            return

    def _forget_bridged_forwarding(self) -> None:
        nft = shutil.which("nft") or shutil.which("nft", path="/usr/sbin:/sbin")
        if not nft:
            return
        comment = f'comment "orch-lab-{self.layout.name}"'
        for chain in ("DOCKER-USER", "FORWARD"):
            listing = _run([nft, "-a", "list", "chain", "ip", "filter", chain], check=False)
            for line in listing.stdout.decode().splitlines():
                if comment in line and "# handle " in line:
                    handle = line.rsplit("# handle ", 1)[1].strip()
                    _run([nft, "delete", "rule", "ip", "filter", chain, "handle", handle], check=False)

    def _refuse_subnet_clash(self) -> None:
        prefix = self.layout.gateway.rsplit(".", 1)[0] + "."
        out = _run([self.tools["ip"], "-o", "-4", "addr", "show"]).stdout.decode()
        for line in out.splitlines():
            fields = line.split()
            if len(fields) > 3 and fields[3].startswith(prefix):
                raise LabError(f"lab {self.layout.name!r} would use {self.layout.subnet}, but {fields[1]} "
                               f"already has {fields[3]}", hint="choose another --name")

    def _ensure_binfmt(self) -> List[str]:
        """The lab's own (orch-qemu-*) binfmt entries it relies on, registered now or by another lab
        before it: recorded, so that another lab going down never removes one this lab uses."""
        registered = list(self._recorded().get("binfmt", []))
        for arch in self.layout.foreign_qemu():
            name = binfmt.ensure_qemu(arch) or binfmt.registered_with_fix_binary(arch)
            if name and name.startswith(binfmt.OUR_PREFIX) and name not in registered:
                registered.append(name)
        return registered

    def _ensure_host(self, host: HostLayout) -> bool:
        """Make the host exist and run sshd; True when sshd was (re)started by this call."""
        pid = _read_pid(host.pid_file)
        if pid and _pid_alive(pid) and _netns_exists(host.netns):
            if self._recorded().get("spec", {}).get("link_rate") != self.layout.spec.link_rate:
                self._apply_link_rate(host)
            return False
        self._teardown_host(host)
        try:
            return self._start_host(host)
        except BaseException:
            self._teardown_host(host)        # half started (namespace, veth, disk): not left behind
            raise

    def _start_host(self, host: HostLayout) -> bool:
        for d in (host.state_dir, host.var_lib_orch, host.etc_orch, host.run_dir, host.root_home):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(host.state_dir, 0o700)
        os.chmod(host.root_home, 0o700)
        _write_atomic(host.etc_orch / "platform", host.platform + "\n")
        _write_atomic(host.etc_orch / "hostname", host.name + "\n")
        self._ensure_key(host.host_key, f"orch-lab-{host.lab}-{host.name}")
        _write_atomic(host.sshd_config, render_sshd_config(host, self.layout.authorized_keys), 0o600)
        for mountpoint in ("/var/lib/orch", "/etc/orch"):
            os.makedirs(mountpoint, exist_ok=True)
        self._ensure_host_network(host)
        if host.booted:      # systemd starts sshd inside (orchestrator.lab.power)
            _write_atomic(host.pid_file, f"{power.run_boot(self.layout, host)}\n")
            return True

        ip = self.tools["ip"]
        argv = [ip, "netns", "exec", host.netns,
                self.tools["unshare"], "--mount", "--propagation", "private", "--",
                self.python, "-m", "orchestrator.lab.hostinit", str(host.state_dir), "--",
                self.tools["sshd"], "-D", "-e", "-f", str(host.sshd_config)]
        env = dict(os.environ)
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
        with open(host.log_file, "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True, env=env, cwd="/")
        _write_atomic(host.pid_file, f"{proc.pid}\n")
        return True

    def _ensure_host_network(self, host: HostLayout) -> None:
        """The host's network namespace, its veth on the lab bridge, its address and link rate."""
        ip = self.tools["ip"]
        _run([ip, "netns", "add", host.netns])
        _run([ip, "link", "add", host.veth_root, "type", "veth", "peer", "name", host.veth_host])
        _run([ip, "link", "set", host.veth_host, "netns", host.netns])
        _run([ip, "link", "set", host.veth_root, "master", self.layout.bridge, "up"])
        _run([ip, "-n", host.netns, "link", "set", "lo", "up"])
        _run([ip, "-n", host.netns, "link", "set", host.veth_host, "name", "eth0", "address", host.mac])
        _run([ip, "-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0"])
        # the address may have been another host's a moment ago (a reshaped lab): forget its MAC
        _run([ip, "neigh", "flush", "to", host.address, "dev", self.layout.bridge], check=False)
        _run([ip, "-n", host.netns, "link", "set", "eth0", "up"])
        _run([ip, "-n", host.netns, "route", "add", "default", "via", self.layout.gateway])
        _run([ip, "netns", "exec", host.netns, self.tools["sysctl"], "-qw", "net.ipv4.ip_forward=1"])
        self._apply_link_rate(host)

    def _apply_link_rate(self, host: HostLayout) -> None:
        rate = self.layout.spec.link_rate
        tc = self.tools.get("tc") or find_tool("tc")
        if rate:
            qdisc = ["root", "tbf", "rate", rate, "burst", "64kb", "latency", "100ms"]
            _run([tc, "qdisc", "replace", "dev", host.veth_root] + qdisc)
            _run([self.tools["ip"], "netns", "exec", host.netns, tc, "qdisc", "replace", "dev", "eth0"] + qdisc)
        else:
            _run([tc, "qdisc", "del", "dev", host.veth_root, "root"], check=False)
            _run([self.tools["ip"], "netns", "exec", host.netns, tc, "qdisc", "del", "dev", "eth0", "root"],
                 check=False)

    def _wait_ssh(self, host: HostLayout, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _port_open(host.address, host.ssh_port):
                return
            pid = _read_pid(host.pid_file)
            if pid and not _pid_alive(pid):
                break
            time.sleep(0.05)
        log = host.log_file.read_text(errors="replace")[-2000:] if host.log_file.exists() else ""
        raise LabError(f"sshd on lab host {host.name} did not come up", hint=f"log: {log.strip()[-500:]}")

    def _write_known_hosts(self) -> None:
        lines = []
        for host in self.layout.hosts():
            pub = host.host_key.with_suffix(".pub").read_text()
            lines.append(render_known_hosts_line(host.address, host.ssh_port, pub))
        _write_atomic(self.layout.known_hosts, "\n".join(lines) + "\n")

    def _write_record(self, binfmt_names: List[str]) -> None:
        record = {
            "spec": asdict(self.layout.spec),
            "state_root": str(self.layout.state_root),
            "hosts": [h.name for h in self.layout.hosts()],
            "binfmt": binfmt_names,
        }
        _write_atomic(self.layout.record, json.dumps(record, indent=2, sort_keys=True) + "\n")

    def _recorded(self) -> dict:
        try:
            return json.loads(self.layout.record.read_text())
        except (OSError, ValueError):
            return {}

    def _recorded_hosts(self) -> List[HostLayout]:
        rec = self._recorded()
        if not rec.get("spec"):
            return []
        old = LabLayout(LabSpec(**rec["spec"]), self.layout.state_root)
        return list(old.hosts())

    # ---- status ---------------------------------------------------------------------------
    def status(self) -> List[dict]:
        out = []
        for host in self.layout.hosts():
            pid = _read_pid(host.pid_file)
            alive = bool(pid and _pid_alive(pid))
            pub_path = host.host_key.with_suffix(".pub")
            known = render_known_hosts_line(host.address, host.ssh_port, pub_path.read_text()) \
                if pub_path.exists() else None
            out.append({
                "name": host.name,
                "lab": host.lab,
                "address": host.address,
                "platform": host.platform,
                "ssh_port": host.ssh_port,
                "user": "root",
                "key_path": str(self.layout.user_key),
                "known_hosts_path": str(self.layout.known_hosts),
                "known_hosts_line": known,
                "netns": host.netns,
                "pid": pid if alive else None,
                "link_rate": self.layout.spec.link_rate,
                "up": alive and _port_open(host.address, host.ssh_port),
            })
        return out

    # ---- down -----------------------------------------------------------------------------
    def down(self) -> None:
        self.tools = {t: shutil.which(t) or find_tool(t) for t in ("ip", "nsenter")}
        rec = self._recorded()
        hosts = self._recorded_hosts() or list(self.layout.hosts())
        for host in hosts:
            self._teardown_host(host)
        power.run_remove_lab_cgroups(self.layout.name)
        ip = self.tools["ip"]
        if _link_exists(self.layout.bridge):
            _run([ip, "link", "del", self.layout.bridge], check=False)
        self._forget_bridged_forwarding()
        binfmt.remove([n for n in rec.get("binfmt", []) if not self._binfmt_used_elsewhere(n)])
        if self.layout.state_dir.exists():
            shutil.rmtree(self.layout.state_dir)

    def _binfmt_used_elsewhere(self, name: str) -> bool:
        root = self.layout.state_root
        if not root.exists():
            return False
        for rec_path in root.glob("*/lab.json"):
            if rec_path == self.layout.record:
                continue
            try:
                if name in json.loads(rec_path.read_text()).get("binfmt", []):
                    return True
            except (OSError, ValueError):
                continue
        return False

    def _teardown_host(self, host: HostLayout) -> None:
        ip = self.tools.get("ip") or find_tool("ip")
        pid = _read_pid(host.pid_file)
        if host.booted:
            power.run_power_off(host, pid if pid and _pid_alive(pid) else None)
        if pid and _pid_alive(pid):
            for p in self._netns_pids(host):     # the agent first: its serve would restart
                if p != pid:                     # (or finish creating) what is deleted next
                    self._kill(p)
            self._delete_containers(host, pid)
        for p in self._netns_pids(host):
            self._kill(p)
        if pid and _pid_alive(pid):
            self._kill(pid)
        if _netns_exists(host.netns):
            _run([ip, "netns", "del", host.netns], check=False)
        if _link_exists(host.veth_root):
            _run([ip, "link", "del", host.veth_root], check=False)
        if host.pid_file.exists():
            host.pid_file.unlink()

    def _delete_containers(self, host: HostLayout, sshd_pid: int) -> None:
        """Containers run in their own network namespaces: delete them through their runtime's state."""
        nsenter = self.tools.get("nsenter") or find_tool("nsenter")
        for runtime in ("runc", "crun"):
            path = shutil.which(runtime) or shutil.which(runtime, path="/usr/sbin:/sbin")
            if not path:
                continue
            for state in RUNTIME_STATE_DIRS:
                if not (host.run_dir / state).is_dir():
                    continue
                enter = [nsenter, "-t", str(sshd_pid), "-m", "-n", "--", path, "--root", f"/run/{state}"]
                listing = _run(enter + ["list", "-q"], check=False).stdout.decode().split()
                for cid in listing:
                    _run(enter + ["delete", "--force", cid], check=False)

    def _netns_pids(self, host: HostLayout) -> List[int]:
        if not _netns_exists(host.netns):
            return []
        out = _run([self.tools.get("ip") or find_tool("ip"), "netns", "pids", host.netns], check=False)
        return [int(x) for x in out.stdout.decode().split() if x.isdigit()]

    @staticmethod
    def _kill(pid: int, timeout: float = 3.0) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _pid_alive(pid):
            time.sleep(0.02)
        try:  # reap it if it is our own child
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def known_labs(state_root: Path = DEFAULT_STATE_ROOT) -> List[str]:
    if not state_root.exists():
        return []
    return sorted(p.parent.name for p in state_root.glob("*/lab.json"))


def load_layout(name: str, state_root: Path = DEFAULT_STATE_ROOT) -> LabLayout:
    """The layout of a lab that is up (from its record)."""
    record = state_root / name / "lab.json"
    try:
        rec = json.loads(record.read_text())
    except (OSError, ValueError):
        raise LabError(f"lab {name!r} is not up", hint="run: orch lab up") from None
    return LabLayout(LabSpec(**rec["spec"]), state_root)
