"""examples/uwsgi, the seed's Dockerfile: built for amd64 and arm64 (twice, the same digests) and
served by uWSGI on both hosts of a lab of its own, health-checked by the Dockerfile's HEALTHCHECK."""
from __future__ import annotations

import os
import re
import secrets
import shutil
import urllib.request

import pytest

from orchestrator.fleet.deploy import apply, observe, prepare
from orchestrator.image import build_services
from orchestrator.image.store import Store
from orchestrator.manifest import load_desired
from orchestrator.transport.ssh import ConnectionPool
from tests.image.conftest import REPO

LAB = f"test-uwsgi-{secrets.token_hex(2)}"


@pytest.fixture(scope="module")
def uwsgi_project(debian_home, tmp_path_factory):
    """A copy of examples/uwsgi (without its orch.lock) aimed at a lab of its own; the session's
    debian home keeps the Debian bases between the tests (the arm64 one runs dpkg under qemu)."""
    directory = tmp_path_factory.mktemp("uwsgi") / "uwsgi"
    shutil.copytree(os.path.join(REPO, "examples/uwsgi"), directory)
    (directory / "orch.lock").unlink()     # the first build resolves versions, the fresh one is pinned
    manifest = directory / "orch.yaml"
    manifest.write_text(re.sub(r"name: uwsgilab", f"name: {LAB}", manifest.read_text()))
    old_home = os.environ.get("ORCH_HOME")
    os.environ["ORCH_HOME"] = debian_home
    try:
        yield directory
    finally:
        from orchestrator.lab.layout import LabLayout, LabSpec
        from orchestrator.lab.machine import LabMachine
        LabMachine(LabLayout(LabSpec(LAB))).down()
        if old_home is None:
            os.environ.pop("ORCH_HOME", None)
        else:
            os.environ["ORCH_HOME"] = old_home


def test_built_twice_with_identical_digests(uwsgi_project, debian_home, tmp_path):
    store = Store(os.path.join(debian_home, "store"))
    first = build_services(load_desired(str(uwsgi_project), {}), store)["uwsgi"]
    print(f"uwsgi index {first.index_digest}: " + ", ".join(f"{p} {d}" for p, d in first.manifests.items()))
    again = build_services(load_desired(str(uwsgi_project), {}), store)["uwsgi"]
    assert again.index_digest == first.index_digest
    assert all(i.built == 0 for i in again.images.values())
    # and from nothing (a fresh store and cache, now pinned by the orch.lock the first build wrote):
    # amd64 rebuilt byte for byte, mmdebstrap included (arm64 runs the same code under qemu, ~10x slower)
    fresh = build_services(load_desired(str(uwsgi_project), {}), Store(str(tmp_path / "store")),
                           platforms=["linux/amd64"], cache_dir=str(tmp_path / "cache"))["uwsgi"]
    assert fresh.images["linux/amd64"].built == len(fresh.images["linux/amd64"].layers)
    assert fresh.manifests["linux/amd64"] == first.manifests["linux/amd64"]
    for platform, arch in (("linux/amd64", "amd64"), ("linux/arm64", "arm64")):
        config = store.read_json(store.read_json(first.manifests[platform])["config"]["digest"])
        assert config["architecture"] == arch
        assert config["config"]["User"] == "www-data" and config["config"]["StopSignal"] == "SIGINT"
        assert config["config"]["Cmd"][0] == "uwsgi" and "8000/tcp" in config["config"]["ExposedPorts"]


def test_apply_serves_on_both_lab_hosts(uwsgi_project):
    prep = prepare(str(uwsgi_project), {})
    svc = prep.desired.services["uwsgi"]
    assert svc.deploy.health.kind == "exec" and svc.deploy.health.command[0] == "python3"
    with ConnectionPool(h.target for h in prep.hosts) as pool:
        obs = observe(prep, pool)
        report = apply(prep, obs, pool)
    assert report.ok, report
    machines = set()
    for host in prep.hosts:
        with urllib.request.urlopen(f"http://{host.target.address}:8090/", timeout=10) as resp:
            body = resp.read().decode()
        assert body.startswith("Hello from a Dockerfile from uWSGI on "), body
        machines.add(body.split(" on ")[1].split()[0])
    assert machines == {"x86_64", "aarch64"}
