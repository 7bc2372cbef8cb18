"""A lab Fleet's keys are the lab's own host kinds (orchestrator.lab.layout.HOST_KINDS): booted arm
hosts are declared like any other kind, and the platforms a service is built for follow them."""
import pytest

from orchestrator.errors import ManifestError
from orchestrator.manifest.loader import fleet_platforms, load_desired

SERVICE = ("kind: Service\nname: web\nimage: {from: scratch, steps: [], cmd: [/bin/true]}\n"
           "deploy: {hosts: all}\n")


def fleet(tmp_path, lab):
    (tmp_path / "fleet.yaml").write_text(f"kind: Fleet\nname: pis\nlab: {lab}\n---\n{SERVICE}")
    return load_desired(str(tmp_path)).fleet


@pytest.mark.parametrize("lab, counts, platforms", [
    ("{hosts: 0, arm64: 0, booted_arm64: 1, booted_armv7: 1}", {"booted_arm64": 1, "booted_armv7": 1},
     ("linux/arm64", "linux/arm/v7")),
    ("{hosts: 0, arm64: 1, armv7: 2, link_rate: 2mbit}", {"arm64": 1, "armv7": 2},
     ("linux/arm64", "linux/arm/v7")),
    ("{hosts: 1, arm64: 0, booted: 1, bullseye: 1}", {"amd64": 1, "booted": 1, "bullseye": 1}, ("linux/amd64",)),
    ("{}", {"amd64": 2, "arm64": 1}, ("linux/amd64", "linux/arm64")),
])
def test_lab_kinds_and_their_platforms(tmp_path, lab, counts, platforms):
    f = fleet(tmp_path, lab)
    for kind in ("amd64", "arm64", "armv7", "booted", "bullseye", "booted_arm64", "booted_armv7"):
        assert getattr(f.lab, kind) == counts.get(kind, 0), kind
    assert fleet_platforms(f) == platforms


def test_an_unknown_kind_is_refused_with_its_path(tmp_path):
    with pytest.raises(ManifestError, match="fleet/pis/lab.*booted_arm32"):
        fleet(tmp_path, "{booted_arm32: 1}")
