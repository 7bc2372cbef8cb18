"""The agent upgrade and the fleet commands (status, hosts, audit, rollback) on a lab fleet of
their own (2 amd64 + 1 arm64).

They ran at the end of test_apply_lab.py until a run there, after the fault tests, left hosts
whose next apply failed its health checks (not understood yet: see the closing note of the
session that moved them); on a lab of their own they test what they say.
"""
from __future__ import annotations

import secrets
import shutil
import time

import pytest

from orchestrator.fleet.deploy import observe, prepare
from orchestrator.transport.ssh import ConnectionPool
from tests.conftest import REPO, fleet_lab_home
from tests.fleet.test_apply_lab import Hammer, orch_cli, run_apply

LAB = f"test-cmds-{secrets.token_hex(2)}"


@pytest.fixture(scope="module")
def lab_project(tmp_path_factory):
    """A copy of the default manifests aimed at this module's own lab; removed afterwards."""
    directory = tmp_path_factory.mktemp("project") / "manifests"
    shutil.copytree(REPO / "manifests", directory)
    (directory / "fleet.yaml").write_text(f"kind: Fleet\nname: {LAB}\nlab: {{hosts: 2, arm64: 1}}\n")
    with fleet_lab_home(LAB, tmp_path_factory.mktemp("orch-home")):
        yield directory


def test_a_new_agent_is_installed_without_stopping_the_containers(lab_project, tmp_path):
    import dataclasses
    import hashlib
    import zipfile

    run_apply(lab_project)                                       # whatever an earlier test left, converge first
    prep = prepare(str(lab_project), {})
    newer = tmp_path / "agent.pyz"
    shutil.copy(prep.agent_pyz, newer)
    with zipfile.ZipFile(newer, "a") as zf:                  # same code, one more entry: another digest
        zf.writestr("upgrade-marker.txt", secrets.token_hex(8))
    digest = "sha256:" + hashlib.sha256(newer.read_bytes()).hexdigest()
    upgraded = dataclasses.replace(prep, agent_pyz=str(newer), agent_digest=digest)
    with ConnectionPool(h.target for h in prep.hosts) as pool:
        before_obs = observe(prep, pool)
        before = {h: (c.info()["serve_pid"], c.status()["services"]["hello"]) for h, c in before_obs.clients.items()}
        with Hammer(h.target.address for h in prep.hosts) as hammer:
            obs = observe(upgraded, pool)
            time.sleep(1.0)
        assert obs.plan.up_to_date
        for host, client in obs.clients.items():
            info = client.info()
            assert info["agent_digest"] == digest and info["serve_pid"] not in (None, before[host][0])
            now = client.status()["services"]["hello"]
            assert (now["release"], now["slot"], now["since"]) == (
                before[host][1]["release"], before[host][1]["slot"], before[host][1]["since"])
    assert hammer.ok > 10 and hammer.failures == []


def test_fleet_commands_status_hosts_audit_and_rollback(lab_project):
    import json

    run_apply(lab_project)                          # a known history: the project's release, then one change
    css = lab_project / "hello" / "www" / "style.css"
    css.write_text(css.read_text() + f"\n/* before rollback {secrets.token_hex(4)} */\n")
    assert run_apply(lab_project)[2].ok
    status = json.loads(orch_cli("status", str(lab_project), "--json").stdout)
    assert sorted(r["host"] for r in status) == ["amd64-1", "amd64-2", "arm64-1"]
    current = {r["release"] for r in status}
    assert len(current) == 1 and all(r["state"] == "running" and r["health"] == "healthy" for r in status)
    previous = status[0]["previous"][-1]
    assert previous not in current

    hosts = json.loads(orch_cli("hosts", str(lab_project), "--json").stdout)
    assert {h["host"]: h["platform"] for h in hosts} == {
        "amd64-1": "linux/amd64", "amd64-2": "linux/amd64", "arm64-1": "linux/arm64"}
    assert all(h["reachable"] and h["runtime"] in ("runc", "crun") for h in hosts)

    audit = json.loads(orch_cli("audit", str(lab_project), "--json").stdout)
    assert {(a["host"], a["action"]) for a in audit} >= {(h, "apply") for h in ("amd64-1", "amd64-2", "arm64-1")}
    rollbacks_before = sum(1 for a in audit if a["action"] == "rollback")

    back = orch_cli("rollback", "hello", str(lab_project))
    assert back.returncode == 0, back.stderr
    status = json.loads(orch_cli("status", str(lab_project), "--json").stdout)
    assert {r["release"] for r in status} == {previous}
    audit = json.loads(orch_cli("audit", str(lab_project), "--json").stdout)
    assert sum(1 for a in audit if a["action"] == "rollback") == rollbacks_before + 3
    assert all(a["who"] != "unknown" for a in audit if a["action"] == "rollback")      # says who did it

    again = orch_cli("apply", str(lab_project))                   # the manifests win again
    assert again.returncode == 0, again.stderr
    assert {r["release"] for r in json.loads(orch_cli("status", str(lab_project), "--json").stdout)} == current
    assert "up to date" in orch_cli("apply", str(lab_project)).stdout
