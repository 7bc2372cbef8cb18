"""Faults on real lab hosts: power cut (memory and tmpfs lost, disk kept), boot, an orderly
reboot, and link control."""
import os
import socket
import time

import pytest

from orchestrator.lab import faults
from orchestrator.lab.machine import LabMachine, _pid_alive, _read_pid
from tests.conftest import own_lab

# A unit whose stop leaves a mark on the disk: written by an orderly shutdown, never by a power cut.
MARK_UNIT = """[Unit]
Description=leaves a mark when stopped
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true
ExecStop=/bin/sh -c 'echo stopped > /var/lib/orch/stopped-cleanly'
[Install]
WantedBy=multi-user.target
"""


@pytest.fixture(scope="module")
def fault_lab():
    with own_lab("fault", amd64=1, arm64=0, booted=1) as the_lab:
        yield the_lab


def sh(lab, name, line, timeout=60):
    rc, out, err = lab.run(lab.host(name), ["sh", "-c", line], timeout=timeout)
    assert rc == 0, (line, out, err)
    return out.decode()


def port_open(address, port=22):
    try:
        socket.create_connection((address, port), timeout=1).close()
        return True
    except OSError:
        return False


def wait_port(address, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(address):
            return True
        time.sleep(0.1)
    return False


def reconnect(lab, name):
    lab.pool.get(name).close()          # the old session died with the host


def test_power_cut_loses_memory_and_tmpfs_keeps_the_disk(fault_lab):
    lay, machine = fault_lab.layout, LabMachine(fault_lab.layout)
    host = lay.host("booted-1")
    sh(fault_lab, "booted-1", "echo r > /run/mark; echo t > /tmp/mark; echo e > /etc/mark; "
                              "echo v > /var/lib/orch/mark; sync; setsid sleep 1000 </dev/null >/dev/null 2>&1 &")
    leader = int(open(f"/proc/{_read_pid(host.pid_file)}/task/{_read_pid(host.pid_file)}/children").read().split()[0])
    faults.run_power_cut(machine, host)
    assert not _pid_alive(leader)
    assert not port_open(host.address)
    assert not os.path.exists(f"/run/netns/{host.netns}")
    assert not any(line.split()[4] == str(host.rootfs) for line in open("/proc/self/mountinfo"))
    assert [s["up"] for s in machine.status() if s["name"] == "booted-1"] == [False]
    took = faults.run_boot(machine, host)
    assert 0 < took < 60
    reconnect(fault_lab, "booted-1")
    out = sh(fault_lab, "booted-1", "cat /proc/1/comm; ls /run/mark /tmp/mark 2>/dev/null | wc -l; "
                                    "cat /etc/mark /var/lib/orch/mark; pgrep -c sleep || true")
    assert out.split() == ["systemd", "0", "e", "v", "0"]


def test_a_reboot_stops_units_in_order_and_a_power_cut_does_not(fault_lab):
    lay, machine = fault_lab.layout, LabMachine(fault_lab.layout)
    host = lay.host("booted-1")
    setup = ("rm -f /var/lib/orch/stopped-cleanly; cat > /etc/systemd/system/mark.service; "
             "systemctl daemon-reload; systemctl enable --now mark.service")
    rc, _, err = fault_lab.run(fault_lab.host("booted-1"), ["sh", "-c", setup], input=MARK_UNIT.encode())
    assert rc == 0, err
    faults.run_power_cut(machine, host)
    faults.run_boot(machine, host)
    reconnect(fault_lab, "booted-1")
    assert not (host.var_lib_orch / "stopped-cleanly").exists()
    assert sh(fault_lab, "booted-1", "systemctl is-active mark.service").strip() == "active"
    assert faults.run_reboot(machine, host) < 60
    reconnect(fault_lab, "booted-1")
    assert (host.var_lib_orch / "stopped-cleanly").read_text() == "stopped\n"
    assert sh(fault_lab, "booted-1", "cat /proc/1/comm").strip() == "systemd"


def test_a_plain_host_loses_its_run_and_keeps_var_lib_orch(fault_lab):
    lay, machine = fault_lab.layout, LabMachine(fault_lab.layout)
    host = lay.host("amd64-1")
    sh(fault_lab, "amd64-1", "echo r > /run/mark; echo v > /var/lib/orch/mark")
    faults.run_power_cut(machine, host)
    assert not port_open(host.address)
    faults.run_boot(machine, host)
    reconnect(fault_lab, "amd64-1")
    assert sh(fault_lab, "amd64-1", "ls /run/mark 2>/dev/null | wc -l; cat /var/lib/orch/mark").split() == ["0", "v"]


def test_link_down_cuts_the_host_off_and_up_brings_it_back(fault_lab):
    host = fault_lab.layout.host("amd64-1")
    faults.run_link(host, "down")
    try:
        assert not port_open(host.address)
    finally:
        faults.run_link(host, "up")
    assert wait_port(host.address)          # the link comes back (ARP resolves again within a second)
    faults.run_link(host, "rate", "2mbit")
    qdisc = os.popen(f"tc qdisc show dev {host.veth_root}").read()
    assert "tbf" in qdisc and "2Mbit" in qdisc
    faults.run_link(host, "rate", "none")
    assert "tbf" not in os.popen(f"tc qdisc show dev {host.veth_root}").read()
