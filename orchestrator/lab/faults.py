"""Faults a person can cause on a lab host: pull the plug, switch it on, reboot it, cut or
throttle its link.

A power cut kills every process of the host at once and loses everything in memory: /run and
/tmp (tmpfs), the network namespace with its addresses, nftables rules and container veths. The
disk is kept (a booted host's overlay and its /var/lib/orch; a plain host's /var/lib/orch).
"""
from __future__ import annotations

import shutil
import subprocess
import time
from typing import List, Optional

from orchestrator.errors import LabError
from orchestrator.lab import power
from orchestrator.lab.layout import _RATE_RE, HostLayout
from orchestrator.lab.machine import LabMachine, _pid_alive, _read_pid
from orchestrator.tools import find_tool

LINK_ACTIONS = ("down", "up", "rate")
SHUTDOWN_TIMEOUT = 30.0


def run_power_cut(machine: LabMachine, host: HostLayout) -> None:
    machine.stop_host(host)
    if not host.booted:              # a plain host's /run is a directory of the machine: empty it
        for entry in host.run_dir.iterdir() if host.run_dir.is_dir() else []:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink()


def run_boot(machine: LabMachine, host: HostLayout) -> float:
    """Switch the host on; seconds until its sshd answered (0.0 when it was already on)."""
    machine.need_tools()
    start = time.monotonic()
    return time.monotonic() - start if machine.start_host(host) else 0.0


def run_reboot(machine: LabMachine, host: HostLayout) -> float:
    """An orderly reboot for a booted host (systemd stops its units), a power cycle for a plain
    one; seconds from the request until sshd answered again."""
    machine.need_tools()
    start = time.monotonic()
    pid = _read_pid(host.pid_file)
    if host.booted and pid and _pid_alive(pid):
        power.run_shutdown(pid, SHUTDOWN_TIMEOUT)       # what did not stop in time is cut below
    run_power_cut(machine, host)
    machine.start_host(host)
    return time.monotonic() - start


def render_link_argv(ip: str, tc: str, host: HostLayout, action: str, rate: Optional[str]) -> List[List[str]]:
    """The commands for `orch lab link HOST down|up|rate R` (rate `none` lifts the limit)."""
    if action in ("down", "up"):
        return [[ip, "link", "set", host.veth_root, action]]
    if action != "rate":
        raise LabError(f"link action {action!r}: expected one of {', '.join(LINK_ACTIONS)}")
    if rate in (None, ""):
        raise LabError("link rate: give a tc rate such as 2mbit, or none")
    inside = [ip, "netns", "exec", host.netns, tc]
    if rate == "none":
        return [[tc, "qdisc", "del", "dev", host.veth_root, "root"],
                inside + ["qdisc", "del", "dev", "eth0", "root"]]
    if not _RATE_RE.match(rate):
        raise LabError(f"link rate {rate!r}: expected a tc rate such as 2mbit or 500kbit, or none")
    qdisc = ["root", "tbf", "rate", rate, "burst", "64kb", "latency", "100ms"]
    return [[tc, "qdisc", "replace", "dev", host.veth_root] + qdisc,
            inside + ["qdisc", "replace", "dev", "eth0"] + qdisc]


def run_link(host: HostLayout, action: str, rate: Optional[str] = None) -> None:
    """Cut, restore or throttle the host's link (until the host is next switched on)."""
    argvs = render_link_argv(find_tool("ip"), find_tool("tc") if action == "rate" else "tc", host, action, rate)
    for argv in argvs:
        proc = subprocess.run(argv, capture_output=True)
        deleting = "del" in argv
        if proc.returncode != 0 and not deleting:
            raise LabError(f"link {action} on {host.name}: {proc.stderr.decode(errors='replace').strip()}",
                           hint="is the host switched on? (orch lab boot HOST)")
