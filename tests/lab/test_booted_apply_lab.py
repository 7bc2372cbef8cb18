"""`orch apply` onto a lab of booted hosts from a manifest (`lab: {booted: 1}`): the agent it
installs is a systemd unit, and after a power cut the service serves again by itself."""
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request

from orchestrator.fleet.inventory import lab_layout
from orchestrator.lab import faults
from orchestrator.lab.machine import LabMachine
from orchestrator.manifest.loader import load_desired
from tests.conftest import REPO


def orch(argv, env):
    return subprocess.run([sys.executable, "-m", "orchestrator.cli"] + argv, env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def fetch(address):
    with urllib.request.urlopen(f"http://{address}:8080/", timeout=1) as resp:
        return resp.read()


def test_apply_onto_a_booted_host_and_it_recovers_alone(tmp_path, lab_root):
    name = f"test-bapply-{secrets.token_hex(2)}"
    directory = tmp_path / "manifests"
    shutil.copytree(REPO / "manifests", directory)
    (directory / "fleet.yaml").write_text(f"kind: Fleet\nname: {name}\nlab: {{hosts: 0, arm64: 0, booted: 1}}\n")
    env = dict(os.environ, ORCH_HOME=str(tmp_path / "home"))
    desired = load_desired(str(directory))
    layout = lab_layout(desired.fleet, environ=env)
    assert [(h.name, h.os) for h in layout.hosts()] == [("booted-1", "bookworm")]
    try:
        first = orch(["apply", str(directory)], env)
        assert first.returncode == 0, first.stdout + first.stderr
        host = layout.host("booted-1")
        page = fetch(host.address)
        unit = subprocess.run(["nsenter", "-t", _leader(host), "-a", "systemctl", "is-active", "orch-agent.service"],
                              capture_output=True, text=True)
        assert unit.stdout.strip() == "active"
        machine = LabMachine(layout)
        faults.run_power_cut(machine, host)
        faults.run_boot(machine, host)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if fetch(host.address) == page:
                    break
            except OSError:
                time.sleep(0.2)
        assert fetch(host.address) == page
    finally:
        LabMachine(layout).down()


def _leader(host):
    pid = host.pid_file.read_text().strip()
    return open(f"/proc/{pid}/task/{pid}/children").read().split()[0]
