"""Lab hosts that boot: systemd as PID 1 from a shared Debian root, reached like any lab host."""
import os
from pathlib import Path

import pytest

from orchestrator.lab import roots
from orchestrator.lab.machine import LabMachine
from orchestrator.transport.fanout import fan_out
from tests.conftest import own_lab


@pytest.fixture(scope="module")
def booted_lab():
    with own_lab("boot", amd64=1, arm64=0, booted=1, bullseye=1) as the_lab:
        yield the_lab


PYTHON = {"bookworm": "Python 3.11.", "bullseye": "Python 3.9."}


def test_booted_hosts_run_systemd_as_pid1_and_sshd_with_the_labs_key(booted_lab):
    booted = [h for h in booted_lab.layout.hosts() if h.booted]
    assert [h.os for h in booted] == ["bookworm", "bullseye"]
    argv = ["sh", "-c", "cat /proc/1/comm; hostname; python3 --version; systemctl is-system-running --wait; "
            "systemctl is-active ssh"]
    res = fan_out([booted_lab.host(h.name) for h in booted], lambda h: booted_lab.run(h, argv, timeout=60))
    assert res.all_ok, res.failed
    for h in booted:
        rc, out, err = res.ok[h.name]
        lines = out.decode().splitlines()
        assert rc == 0, (out, err)
        assert lines[0] == "systemd" and lines[1] == h.name
        assert lines[2].startswith(PYTHON[h.os])
        assert lines[3:] == ["running", "active"]
    status = {s["name"]: s for s in LabMachine(booted_lab.layout).status()}
    assert all(s["up"] for s in status.values())


def test_a_plain_host_beside_them_is_not_booted(booted_lab):
    rc, out, _ = booted_lab.run(booted_lab.host("amd64-1"), ["cat", "/proc/1/comm"])
    assert rc == 0 and out.decode().strip() != "systemd"


def test_each_disk_is_copy_on_write_over_the_shared_root(booted_lab):
    host = booted_lab.layout.host("booted-1")
    lab_host = booted_lab.host("booted-1")
    rc, _, err = booted_lab.run(lab_host, ["sh", "-c", "echo mine > /etc/orch-marker && sync"])
    assert rc == 0, err
    shared = booted_lab.layout.roots_dir / roots.root_key("bookworm")
    assert (host.upper_dir / "etc" / "orch-marker").read_text() == "mine\n"
    assert not (shared / "etc" / "orch-marker").exists()
    assert not list((shared / "etc" / "ssh").glob("ssh_host_*"))     # keys are per host
    rc, out, _ = booted_lab.run(booted_lab.host("bullseye-1"), ["cat", "/etc/orch-marker"])
    assert rc != 0


def test_run_and_tmp_are_tmpfs_and_var_lib_orch_is_the_hosts_own_disk(booted_lab):
    rc, out, err = booted_lab.run(booted_lab.host("booted-1"),
                                  ["sh", "-c", "findmnt -no FSTYPE /run; findmnt -no FSTYPE /tmp; "
                                   "echo kept > /var/lib/orch/marker"])
    assert rc == 0, err
    assert out.decode().split() == ["tmpfs", "tmpfs"]
    host = booted_lab.layout.host("booted-1")
    assert (host.var_lib_orch / "marker").read_text() == "kept\n"


def test_down_leaves_no_mount_and_no_cgroup(lab_root):
    with own_lab("bdown", amd64=0, arm64=0, booted=1) as the_lab:
        host = the_lab.layout.host("booted-1")
        rootfs = str(host.rootfs)
        assert any(line.split()[4] == rootfs for line in open("/proc/self/mountinfo"))
    assert not any(line.split()[4] == rootfs for line in open("/proc/self/mountinfo"))
    assert not Path("/sys/fs/cgroup/systemd/orch-lab", the_lab.name).exists()
    assert not os.path.exists(f"/run/netns/{host.netns}")
