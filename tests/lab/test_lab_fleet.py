"""The lab fleet on the real kernel: namespaces, sshd, strict host keys, binfmt, teardown."""
import os
import subprocess
import time
from pathlib import Path

import pytest

from orchestrator.errors import HostKeyError
from orchestrator.transport.fanout import fan_out
from orchestrator.lab.machine import LabMachine
from orchestrator.transport.ssh import SSHConnection
from tests.conftest import make_lab, remove_lab

ELF_MACHINE = {"linux/amd64": 62, "linux/arm64": 183, "linux/arm/v7": 40}
UNAME_M = {"linux/amd64": "x86_64", "linux/arm64": "aarch64", "linux/arm/v7": "armv7l"}


def test_every_host_answers_over_ssh_with_its_key_verified(lab):
    res = fan_out(lab.hosts, lambda h: lab.run(h, ["cat", "/etc/orch/platform", "/etc/orch/hostname"]))
    assert res.all_ok, res.failed
    for h in lab.hosts:
        rc, out, _ = res.ok[h.name]
        assert rc == 0 and out.decode().split() == [h.platform, h.name]


def test_status_reports_every_host_up(lab):
    status = LabMachine(lab.layout).status()
    assert [s["name"] for s in status] == [h.name for h in lab.hosts]
    assert all(s["up"] and s["known_hosts_line"].startswith(s["address"] + " ssh-ed25519 ") for s in status)


def test_unknown_host_key_is_refused(lab, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    target = lab.hosts[0].target
    with pytest.raises(HostKeyError, match="not in known_hosts"):
        SSHConnection(target.__class__(**{**target.__dict__, "known_hosts": str(empty)})).connect()


def test_wrong_host_key_is_refused(lab, tmp_path):
    first, second = lab.hosts[0], lab.hosts[1]
    # known_hosts claims the first host's address has the second host's key
    other_key = (lab.layout.host(second.name).host_key.with_suffix(".pub")).read_text().split()[:2]
    forged = tmp_path / "known_hosts"
    forged.write_text(f"{first.address} {other_key[0]} {other_key[1]}\n")
    target = first.target
    with pytest.raises(HostKeyError, match="host key mismatch"):
        SSHConnection(target.__class__(**{**target.__dict__, "known_hosts": str(forged)})).connect()


def test_private_dirs_are_not_shared_between_hosts(lab):
    a, b = lab.hosts[0], lab.hosts[1]
    marker = f"only-on-{a.name}-{os.getpid()}"
    assert lab.run(a, ["touch", f"/var/lib/orch/{marker}"])[0] == 0
    assert lab.run(a, ["test", "-e", f"/var/lib/orch/{marker}"])[0] == 0
    assert lab.run(b, ["test", "-e", f"/var/lib/orch/{marker}"])[0] != 0
    assert not Path("/var/lib/orch", marker).exists()
    assert lab.run(a, ["test", "-e", f"/run/netns/{a.netns}"])[0] != 0   # the machine's /run is hidden


@pytest.mark.parametrize("platform", ["linux/arm64", "linux/arm/v7", "linux/amd64"])
def test_a_static_binary_runs_on_a_host_of_its_platform(lab, static_busybox, platform):
    binary = static_busybox[platform]
    header = binary.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == ELF_MACHINE[platform]
    host = lab.by_platform(platform)[0]
    lab.put(host, binary, "/var/lib/orch/busybox", 0o755)
    rc, out, err = lab.run(host, ["/var/lib/orch/busybox", "uname", "-m"])
    assert rc == 0, err
    assert out.decode().strip() == UNAME_M[platform]


def test_up_again_changes_nothing(lab):
    before = [s["pid"] for s in LabMachine(lab.layout).status()]
    LabMachine(lab.layout).up()
    assert [s["pid"] for s in LabMachine(lab.layout).status()] == before


def test_a_lab_that_is_up_is_seen_ready_without_a_command_and_anything_missing_is_not(lab):
    """`orch apply` skips `lab up` when `ready()` (read from /sys and /proc) says all is there;
    a bridge taken down, a host's sshd gone or netfilter turned on for the bridge is not ready,
    and `up` brings it back."""
    machine = LabMachine(lab.layout)
    assert machine.ready()
    bridge = lab.layout.bridge
    subprocess.run(["ip", "link", "set", bridge, "down"], check=True)
    assert not machine.ready()
    machine.up()
    assert machine.ready()
    knob = Path("/sys/class/net", bridge, "bridge", "nf_call_iptables")
    if knob.exists():
        knob.write_text("1")
        assert not machine.ready()
        machine.up()
        assert machine.ready()
    host = lab.layout.hosts()[0]
    pid = int(host.pid_file.read_text())
    os.kill(pid, 9)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not _is_zombie(pid) and Path(f"/proc/{pid}").exists():
        time.sleep(0.05)
    assert not machine.ready()
    machine.up()
    assert machine.ready()


def _netns_inode(name):
    return os.stat(f"/run/netns/{name}").st_ino


def test_hosts_reach_each_other_even_when_forward_policy_is_drop(lab):
    """What a Docker engine leaves behind: bridged traffic sent through netfilter, and the
    iptables-nft FORWARD chain dropping by default. `lab up` (run again) makes room for the lab."""
    sysctl = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
    old = sysctl.read_text().strip() if sysctl.exists() else None
    had_filter = subprocess.run(["nft", "list", "chain", "ip", "filter", "FORWARD"], capture_output=True).returncode == 0
    if had_filter:
        subprocess.run(["nft", "chain", "ip", "filter", "FORWARD", "{ policy drop; }"], check=True)
    else:
        subprocess.run(["nft", "-f", "-"], check=True, input=(
            "table ip filter {\n"
            "  chain FORWARD { type filter hook forward priority 0; policy drop; }\n"
            "}\n").encode())
    try:
        if old is not None:
            sysctl.write_text("1")
        a, b = lab.hosts[0], lab.hosts[1]
        probe = ["python3", "-c", "import socket,sys; socket.create_connection((sys.argv[1], 22), 2); print('ok')",
                 b.address]
        LabMachine(lab.layout).up()
        rc, out, err = lab.run(a, probe)
        assert rc == 0 and out.strip() == b"ok", err
    finally:
        if had_filter:
            subprocess.run(["nft", "chain", "ip", "filter", "FORWARD", "{ policy accept; }"], check=True)
            LabMachine(lab.layout)._forget_bridged_forwarding()
        else:
            subprocess.run(["nft", "delete", "table", "ip", "filter"], check=True)
        if old is not None:
            sysctl.write_text(old)


def test_link_rate_throttles_and_down_leaves_nothing_behind(lab_root):
    small = make_lab(f"test-down-{os.getpid() % 10000}", amd64=1, arm64=1, link_rate="2mbit")
    try:
        host = small.hosts[0]
        payload = os.urandom(512 * 1024)   # 4 Mbit: about 2 s at 2mbit
        start = time.monotonic()
        rc, out, _ = small.run(host, ["wc", "-c"], input=payload)
        took = time.monotonic() - start
        assert rc == 0 and int(out) == len(payload)
        assert took > 1.2, f"512 KiB over a 2mbit link took only {took:.2f}s"

        # something long-running on each host, as an agent would be
        for h in small.hosts:
            small.run(h, ["sh", "-c", "sleep 600 >/dev/null 2>&1 &"])
        inodes = {h.netns: _netns_inode(h.netns) for h in small.hosts}
        pids = [s["pid"] for s in LabMachine(small.layout).status()]
        in_lab = [int(p) for h in small.hosts for p in
                  subprocess.run(["ip", "netns", "pids", h.netns], capture_output=True, text=True).stdout.split()]
        assert len(in_lab) >= 4   # two sshd + two sleeps at least
        state_dir = str(small.layout.state_dir)
        bridge = small.layout.bridge
    finally:
        remove_lab(small)

    remove_lab(small)   # twice is fine
    assert not any(Path("/run/netns", n).exists() for n in inodes)
    assert not Path("/sys/class/net", bridge).exists()
    for pid in pids + in_lab:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid), f"pid {pid} survived lab down"
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ino = os.stat(proc / "ns" / "net").st_ino
            except OSError:
                continue
            assert ino not in inodes.values(), f"pid {proc.name} still in a lab namespace"
    assert state_dir not in Path("/proc/self/mountinfo").read_text()
    assert not Path(state_dir).exists()


def _is_zombie(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_reshaping_a_lab_moves_hosts_whose_place_changed(lab_root):
    """The README's second `orch lab up` adds hosts before arm64-1, so arm64-1 moves to another
    address and veth; a host that moved is remade, and a reused address is not answered by the
    host that had it before (stale neighbour entry on the bridge)."""
    name = f"test-shape-{os.getpid() % 10000}"
    first = make_lab(name, amd64=2, arm64=1)
    try:
        for counts in ({"amd64": 3, "arm64": 1, "armv7": 1, "link_rate": "10mbit"}, {"amd64": 4, "arm64": 0}):
            shaped = make_lab(name, **counts)
            try:
                res = fan_out(shaped.hosts, lambda h: shaped.run(h, ["cat", "/etc/orch/platform", "/etc/orch/hostname"]))
                assert not res.failed, res.failed
                for h in shaped.hosts:
                    assert res.ok[h.name][1].decode().split() == [h.platform, h.name]
            finally:
                shaped.pool.close()
    finally:
        remove_lab(first)
