"""{oci: DIR:TAG} and {registry: REF} bases: layers reused byte for byte, config inherited."""
import json
import subprocess

import pytest

from orchestrator.image import build_services
from orchestrator.image.registry import RegistrySource, _is_loopback
from orchestrator.errors import BuildError
from orchestrator.manifest import load_desired
from orchestrator.image.store import Store
from tests.image.conftest import write_tree

BASE = """\
kind: Service
name: base
image:
  from: scratch
  platforms: [linux/amd64, linux/arm64]
  steps:
    - copy: {src: rootfs, dest: /}
  env: {BASE_VAR: "1"}
  cmd: [/bin/base-cmd]
  workdir: /srv
"""

CHILD = """\
kind: Service
name: child
image:
  from: {FROM}
  platforms: [linux/amd64, linux/arm64]
  steps:
    - copy: {src: extra.txt, dest: /srv/extra.txt}
  env: {CHILD_VAR: "2"}
"""


@pytest.fixture
def base_layout(tmp_path, home):
    src = write_tree(tmp_path / "base", {"b.yaml": BASE, "rootfs/bin/base-cmd": "#!/bin/sh\n",
                                         "rootfs/etc/os-release": "ID=test\n"})
    built = build_services(load_desired(src, {}), home)["base"]
    layout = tmp_path / "layout"
    home.export_layout(str(layout), {"base": built.index_digest})
    return str(layout), built


def child(tmp_path, source, store):
    src = write_tree(tmp_path / source.replace(":", "_").replace("/", "_")[:20],
                     {"c.yaml": CHILD.replace("{FROM}", source), "extra.txt": "extra\n"})
    return build_services(load_desired(src, {}), store)["child"]


def check_child(store, built, base, base_store):
    for platform in ("linux/amd64", "linux/arm64"):
        manifest = store.read_json(built.manifests[platform])
        base_manifest = base_store.read_json(base.manifests[platform])
        assert manifest["layers"][:1] == base_manifest["layers"]            # base layer reused as is
        assert len(manifest["layers"]) == 2
        config = store.read_json(manifest["config"]["digest"])["config"]
        assert config["Cmd"] == ["/bin/base-cmd"] and config["WorkingDir"] == "/srv"
        assert "BASE_VAR=1" in config["Env"] and "CHILD_VAR=2" in config["Env"]


def test_oci_layout_base(tmp_path, home, base_layout):
    layout, base = base_layout
    other = Store(str(tmp_path / "other" / "store"))
    built = child(tmp_path, "{oci: '%s:base'}" % layout, other)
    check_child(other, built, base, home)


def test_registry_base_over_the_distribution_api(tmp_path, home, base_layout, registry):
    layout, base = base_layout
    subprocess.run(["skopeo", "copy", "-q", "--all", "--dest-tls-verify=false", f"oci:{layout}:base",
                    f"docker://{registry}/orch-test/base:1"], check=True)
    other = Store(str(tmp_path / "other" / "store"))
    from_registry = child(tmp_path, "{registry: '%s/orch-test/base:1'}" % registry, other)
    check_child(other, from_registry, base, home)
    from_layout = child(tmp_path, "{oci: '%s:base'}" % layout, Store(str(tmp_path / "third" / "store")))
    assert from_registry.index_digest == from_layout.index_digest           # same base, same image
    # by digest too
    digest = json.loads(subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw",
                                        f"docker://{registry}/orch-test/base:1"], capture_output=True,
                                       check=True).stdout)["manifests"][0]["digest"]
    assert digest == base.manifests["linux/amd64"]


def test_registry_errors_are_clear(tmp_path, home, registry):
    with pytest.raises(BuildError, match="HTTP 404"):
        RegistrySource(f"{registry}/orch-test/nothing:1").top()
    with pytest.raises(BuildError, match="cannot reach"):
        RegistrySource("127.0.0.1:9/orch-test/x:1").top()
    assert _is_loopback("127.0.0.1:5000") and _is_loopback("localhost:5000") and not _is_loopback("ghcr.io")


def test_oci_base_without_the_platform(tmp_path, home, base_layout):
    layout, _ = base_layout
    text = CHILD.replace("{FROM}", "{oci: '%s:base'}" % layout).replace(
        "platforms: [linux/amd64, linux/arm64]", "platforms: [linux/arm/v7]")
    src = write_tree(tmp_path / "v7", {"c.yaml": text, "extra.txt": "x"})
    with pytest.raises(BuildError, match=r"no image for linux/arm/v7 \(it has: linux/amd64, linux/arm64\)"):
        build_services(load_desired(src, {}), home)
