"""A `lab up` that fails midway takes down what it started: no host, namespace or sshd is left
that no record names (a failed reshape used to leak the hosts it had started)."""
import os
import secrets
from pathlib import Path

import pytest

from orchestrator.errors import LabError
from orchestrator.lab.layout import LabLayout, LabSpec
from orchestrator.lab.machine import LabMachine, _pid_alive, _read_pid, known_labs


def lab_netns(name):
    return sorted(p.name for p in Path("/run/netns").glob(f"orch-{name}-*")) if Path("/run/netns").is_dir() else []


def break_host(layout, host_name):
    """A host that cannot start: its host key path is taken by a directory."""
    host = layout.host(host_name)
    host.host_key.mkdir(parents=True)
    return host


def break_sshd(layout, host_name):
    """A host whose sshd exits at once (its host key is garbage): it fails after its namespace,
    veth and address were made."""
    host = layout.host(host_name)
    host.state_dir.mkdir(parents=True)
    host.host_key.write_text("not a key\n")
    host.host_key.with_suffix(".pub").write_text("ssh-ed25519 AAAAnotakey\n")
    return host


def test_a_reshape_that_fails_midway_leaves_only_the_hosts_that_were_up(lab_root):
    name = f"rsh-{secrets.token_hex(2)}"
    small = LabLayout(LabSpec(name, amd64=1, arm64=0))
    big = LabLayout(LabSpec(name, amd64=3, arm64=0))
    try:
        LabMachine(small).up()
        first_pid = _read_pid(small.host("amd64-1").pid_file)
        break_sshd(big, "amd64-3")
        with pytest.raises(LabError, match="sshd on lab host amd64-3 did not come up"):
            LabMachine(big).up()
        second = big.host("amd64-2")
        for started in (second, big.host("amd64-3")):      # started by the failed up: gone
            assert not os.path.exists(f"/run/netns/{started.netns}")
            assert not Path("/sys/class/net", started.veth_root).exists()
        assert not (second.pid_file.exists() and _pid_alive(_read_pid(second.pid_file)))
        assert lab_netns(name) == [f"orch-{name}-amd64-1"]              # what was up before stays up
        assert _read_pid(small.host("amd64-1").pid_file) == first_pid
        status = LabMachine(small).status()
        assert [(s["name"], s["up"]) for s in status] == [("amd64-1", True)]
    finally:
        LabMachine(small).down()
    assert lab_netns(name) == []
    assert name not in known_labs()


def test_a_first_up_that_fails_leaves_nothing(lab_root):
    name = f"rsf-{secrets.token_hex(2)}"
    layout = LabLayout(LabSpec(name, amd64=2, arm64=0))
    try:
        break_host(layout, "amd64-2")
        with pytest.raises(Exception):
            LabMachine(layout).up()
        assert lab_netns(name) == []
        assert not Path("/sys/class/net", layout.bridge).exists()
        assert name not in known_labs()
    finally:
        LabMachine(layout).down()


def test_a_lab_records_the_binfmt_entry_another_lab_registered(monkeypatch, tmp_path):
    """Otherwise the other lab's `down` removes the entry while this lab's arm hosts use it."""
    from orchestrator.lab import binfmt
    from orchestrator.lab import machine as machine_mod
    monkeypatch.setattr(binfmt, "ensure_qemu", lambda arch: None)           # there already
    there = {"aarch64": "orch-qemu-aarch64", "arm": "qemu-arm"}             # ours, and Debian's own
    monkeypatch.setattr(binfmt, "registered_with_fix_binary", lambda arch: there[arch])
    m = machine_mod.LabMachine(LabLayout(LabSpec("bf", amd64=0, arm64=1, armv7=1), tmp_path))
    assert m._ensure_binfmt() == ["orch-qemu-aarch64"]                     # never Debian's entry
