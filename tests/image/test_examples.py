"""The shipped manifests and examples load, and the Python example builds for 32-bit arm."""
import gzip
import io
import os
import shutil
import tarfile

import pytest

from orchestrator.image import build_services
from orchestrator.manifest import load_desired
from orchestrator.image.store import Store
from tests.image.conftest import REPO

DIRS = ["manifests", "examples/python-app", "examples/pi-fleet", "examples/canary", "examples/uwsgi"]


@pytest.mark.parametrize("directory", DIRS)
def test_shipped_manifests_load(directory):
    desired = load_desired(os.path.join(REPO, directory), {})
    assert desired.services
    for svc in desired.services.values():
        svc.deploy.to_agent_json()


def test_pi_fleet_selects_by_label():
    d = load_desired(os.path.join(REPO, "examples/pi-fleet"), {})
    sel = d.services["status-page"].deploy.hosts
    assert [h.name for h in d.fleet.hosts if sel.matches(h.name, h.labels)] == ["pi-kitchen", "pi-garage"]


def test_python_example_builds_for_armv7_with_python_run_under_qemu(debian_home, tmp_path):
    src = tmp_path / "python-app"
    shutil.copytree(os.path.join(REPO, "examples/python-app"), src)
    store = Store(os.path.join(debian_home, "store"))
    built = build_services(load_desired(str(src), {}), store, platforms=["linux/arm/v7"])["pyapp"]
    image = built.images["linux/arm/v7"]
    top = image.layers[-1]["digest"]
    tar = tarfile.open(fileobj=io.BytesIO(gzip.decompress(store.read_bytes(top))))
    machine, version = tar.extractfile("etc/pyapp/built-with").read().decode().split()
    assert machine == "armv7l" and version.startswith("3.")
    config = store.read_json(store.read_json(image.manifest_digest)["config"]["digest"])
    assert (config["architecture"], config["variant"]) == ("arm", "v7")
