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


def test_pi_fleet_runs_on_arm_lab_hosts_and_its_readme_fleet_on_real_pis(tmp_path):
    d = load_desired(os.path.join(REPO, "examples/pi-fleet"), {})
    assert (d.fleet.lab.arm64, d.fleet.lab.armv7, d.fleet.lab.amd64, d.fleet.lab.link_rate) == (1, 2, 0, "2mbit")
    readme = open(os.path.join(REPO, "examples/pi-fleet/README.md")).read()
    shutil.copytree(os.path.join(REPO, "examples/pi-fleet"), tmp_path / "pis")
    (tmp_path / "pis" / "fleet.yaml").write_text(readme.split("```yaml\n", 1)[1].split("```", 1)[0])
    real = load_desired(str(tmp_path / "pis"), {})
    sel = real.services["status-page"].deploy.hosts
    assert [(h.name, h.platform) for h in real.fleet.hosts if sel.matches(h.name, h.labels)] == [
        ("pi-kitchen", "linux/arm64"), ("pi-garage", "linux/arm/v7"), ("pi-attic", "linux/arm/v7")]


def test_python_example_builds_for_armv7_with_python_run_under_qemu(debian_home, tmp_path):
    src = tmp_path / "python-app"
    shutil.copytree(os.path.join(REPO, "examples/python-app"), src)
    store = Store(os.path.join(debian_home, "store"))
    built = build_services(load_desired(str(src), {}), store, platforms=["linux/arm/v7"])["pyapp"]
    image = built.images["linux/arm/v7"]
    tars = [tarfile.open(fileobj=io.BytesIO(gzip.decompress(store.read_bytes(layer["digest"]))))
            for layer in image.layers]
    with_file = [t for t in tars if "etc/pyapp/built-with" in t.getnames()]
    assert len(with_file) == 1 and "app/server.py" not in with_file[0].getnames()   # before the app
    machine, version = with_file[0].extractfile("etc/pyapp/built-with").read().decode().split()
    assert machine == "armv7l" and version.startswith("3.")
    config = store.read_json(store.read_json(image.manifest_digest)["config"]["digest"])
    assert (config["architecture"], config["variant"]) == ("arm", "v7")
