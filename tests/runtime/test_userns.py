"""User namespaces, the pure parts: the manifest switch, the agent spec, the config.json mapping."""
import pytest

from orchestrator.errors import ManifestError
from orchestrator.manifest import load_desired
from runtime import bundle
from runtime.bundle import BundleInput, render_config
from runtime.spec import Deploy, SpecError

IMAGE = {"config": {"Cmd": ["/bin/busybox", "true"]}}


def manifest(tmp_path, deploy: str) -> str:
    (tmp_path / "m.yaml").write_text("kind: Service\nname: web\nimage: {from: scratch}\n"
                                     f"deploy:\n  userns: {deploy}\n")
    return str(tmp_path)


def test_manifest_switch_reaches_the_agent_spec(tmp_path):
    d = load_desired(manifest(tmp_path, "true"), {})
    assert d.services["web"].deploy.to_agent_json()["userns"] is True


def test_off_by_default_and_release_ids_unchanged(tmp_path):
    spec = load_desired(manifest(tmp_path, "false"), {}).services["web"].deploy.to_agent_json()
    assert "userns" not in spec
    assert Deploy.from_json(spec).userns is False


def test_a_bad_value_is_located(tmp_path):
    with pytest.raises(ManifestError, match=r"m.yaml:5 services/web/deploy/userns: expected true or false"):
        load_desired(manifest(tmp_path, "maybe"), {})


def test_agent_refuses_a_bad_value_with_its_path():
    with pytest.raises(SpecError, match="userns: expected true or false"):
        Deploy.from_json({"userns": "yes"})


def test_config_maps_root_to_the_service_range():
    base = bundle.userns_base("1a2b3c4d", "web")
    cfg = render_config(IMAGE, Deploy(userns=True), BundleInput("c", "h", "/r", "/orch/c", userns_base=base))
    assert {"type": "user"} in cfg["linux"]["namespaces"]
    want = [{"containerID": 0, "hostID": base, "size": 65536}]
    assert cfg["linux"]["uidMappings"] == want and cfg["linux"]["gidMappings"] == want
    plain = render_config(IMAGE, Deploy(), BundleInput("c", "h", "/r", "/orch/c"))
    assert {"type": "user"} not in plain["linux"]["namespaces"] and "uidMappings" not in plain["linux"]


def test_ranges_are_high_per_service_and_stable():
    bases = {bundle.userns_base("1a2b3c4d", f"svc{i}") for i in range(50)}
    assert len(bases) == 50                                # distinct services, distinct ranges
    assert all(b >= 1 << 20 and b % 65536 == 0 and b + 65536 < 1 << 32 for b in bases)
    assert bundle.userns_base("h", "web") == bundle.userns_base("h", "web")
    assert bundle.userns_base("h", "web") != bundle.userns_base("other-host", "web")


def test_mountpoints_are_made_inside_the_root_and_never_through_a_link(tmp_path):
    from runtime import userns
    root, outside = tmp_path / "rootfs", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "etc").symlink_to(str(outside))                 # an image's link out of its root
    (root / "var").mkdir()
    src = tmp_path / "hosts"
    src.write_text("x")
    mounts = [{"destination": "/proc", "type": "proc", "source": "proc"},
              {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
              {"destination": "/dev/pts", "type": "devpts", "source": "devpts"},
              {"destination": "/etc/hosts", "type": "bind", "source": str(src)},
              {"destination": "/var/cache/app", "type": "bind", "source": str(tmp_path)},
              {"destination": "/run/secrets/pw", "type": "bind", "source": str(src)}]
    userns.make_mountpoints(str(root), mounts)
    assert (root / "proc").is_dir() and (root / "dev").is_dir() and not (root / "dev" / "pts").exists()
    assert (root / "var" / "cache" / "app").is_dir()
    assert (root / "run" / "secrets" / "pw").is_file()
    assert list(outside.iterdir()) == []                    # nothing made through the link
