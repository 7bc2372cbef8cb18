"""Lifecycle on a real lab host: a service dropped from the manifests leaves its hosts at the
next apply (the plan says so first), and another project's service on the same host stays."""
from __future__ import annotations

import secrets
import shutil
import urllib.request
from pathlib import Path

import pytest

from orchestrator.fleet.deploy import apply, observe, prepare
from orchestrator.fleet.report import render_plan
from orchestrator.transport.ssh import ConnectionPool
from tests.conftest import REPO, fleet_lab_home

LAB = f"test-life-{secrets.token_hex(2)}"


def service(name: str, port: int) -> str:
    text = (REPO / "manifests" / "hello.yaml").read_text()
    text = text.replace("name: hello", f"name: {name}").replace('"8080:80"', f'"{port}:80"')
    text = text.replace("platforms: [linux/amd64, linux/arm64]", "platforms: [linux/amd64]")
    return text.replace("strategy: {canary: 1, max_parallel: 1, monitor: 2s, on_failure: rollback}",
                        "strategy: {canary: 0, max_parallel: 1}").replace("drain: 2s", "drain: 0s")


def project_dir(root: Path, name: str, services, project: str = "") -> Path:
    d = root / name
    d.mkdir()
    shutil.copytree(REPO / "manifests" / "hello", d / "hello")
    shutil.copy(REPO / "manifests" / "orch.lock", d / "orch.lock")
    fleet = f"kind: Fleet\nname: {LAB}\n" + (f"project: {project}\n" if project else "")
    (d / "fleet.yaml").write_text(fleet + "lab: {hosts: 1, arm64: 0}\n")
    for svc, port in services:
        (d / f"{svc}.yaml").write_text(service(svc, port))
    return d


@pytest.fixture(scope="module")
def lab_projects(tmp_path_factory):
    root = tmp_path_factory.mktemp("life")
    with fleet_lab_home(LAB, root / "home"):
        yield root


def plan_and_apply(directory: Path):
    prep = prepare(str(directory), {})
    with ConnectionPool(h.target for h in prep.hosts) as pool:
        obs = observe(prep, pool)
        text = render_plan(obs.plan)
        report = apply(prep, obs, pool)
    return prep, obs.plan, text, report


def serves(address: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}:{port}/", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def test_a_dropped_service_is_removed_and_another_projects_service_stays(lab_projects):
    shop = project_dir(lab_projects, "shop", [("web-a", 8081), ("web-b", 8082)])
    farm = project_dir(lab_projects, "farm", [("other", 8083)], project="farm")
    prep, _, _, report = plan_and_apply(shop)
    assert report.ok, report
    _, _, _, report = plan_and_apply(farm)
    assert report.ok, report
    address = prep.hosts[0].target.address
    assert serves(address, 8081) and serves(address, 8082) and serves(address, 8083)

    (shop / "web-b.yaml").unlink()                         # the manifests drop web-b
    _, plan, text, report = plan_and_apply(shop)
    assert [r.service for hp in plan.hosts for r in hp.removals] == ["web-b"]
    assert "- web-b:" in text and "no longer in the manifests" in text
    assert report.ok and report.removed == {prep.hosts[0].name: ["web-b"]}, report
    assert not serves(address, 8082)
    assert serves(address, 8081) and serves(address, 8083)   # farm's service is not shop's to prune

    _, plan, _, report = plan_and_apply(shop)              # and then there is nothing left to do
    assert plan.up_to_date and report.ok
    _, plan, _, _ = plan_and_apply(farm)
    assert plan.up_to_date                                 # farm never saw shop's services as its own

    # orch exec runs a command in the serving container and returns its exit code
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "exec", "web-a", str(shop), "--",
                           "/bin/busybox", "sh", "-c", "cat /srv/www/index.html; exit 7"],
                          capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 7, done.stderr
    assert b"Hello from orch" in done.stdout
    gone = subprocess.run([sys.executable, "-m", "orchestrator.cli", "exec", "web-b", str(shop), "--", "true"],
                          capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    assert gone.returncode != 0 and b"web-b" in gone.stderr        # no longer in the manifests

    # orch remove takes a service off its hosts now; another project's service is refused
    theirs = subprocess.run([sys.executable, "-m", "orchestrator.cli", "remove", "other", str(shop)],
                            capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    assert theirs.returncode != 0 and b"belongs to project 'farm'" in theirs.stderr, theirs.stderr
    assert serves(address, 8083)
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "remove", "web-a", str(shop)],
                          capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert b"removed" in done.stdout and b"the next apply deploys it again" in done.stderr
    assert not serves(address, 8081) and serves(address, 8083)
