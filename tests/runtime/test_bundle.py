"""config.json rendering is pure: compare the output."""
import pytest

from runtime.bundle import BundleInput, env_of, render_config, resolve_user
from runtime.spec import Deploy

D = Deploy.from_json   # render_config reads the typed deploy spec

IMAGE = {"config": {"Entrypoint": ["/bin/busybox"], "Cmd": ["httpd", "-f"],
                    "Env": ["PATH=/bin", "A=image"], "WorkingDir": "/srv"}}
B = BundleInput(container_id="oabc-web-a", hostname="web", rootfs="/c/rootfs",
                cgroups_path="/orch/oabc-web-a",
                volumes=(("/v/data", "/data", False),), secrets=(("/run/s/pw", "/run/secrets/pw"),))


def test_render_full_config():
    deploy = {"env": {"A": "spec", "B": "1"},
              "resources": {"memory": 134217728, "pids": 256, "cpus": 0.5}}
    cfg = render_config(IMAGE, D(deploy), B)
    assert cfg["process"]["args"] == ["/bin/busybox", "httpd", "-f"]
    assert cfg["process"]["env"] == ["A=spec", "B=1", "PATH=/bin"]
    assert cfg["process"]["cwd"] == "/srv"
    assert cfg["process"]["noNewPrivileges"] is True
    assert cfg["process"]["user"] == {"uid": 0, "gid": 0}
    assert "CAP_SYS_ADMIN" not in cfg["process"]["capabilities"]["bounding"]
    assert "CAP_NET_RAW" not in cfg["process"]["capabilities"]["bounding"]
    assert cfg["root"] == {"path": "/c/rootfs", "readonly": True}
    assert cfg["hostname"] == "web"
    assert cfg["linux"]["cgroupsPath"] == "/orch/oabc-web-a"
    assert cfg["linux"]["resources"] == {
        "devices": [{"allow": False, "access": "rwm"}],
        "memory": {"limit": 134217728, "swap": 134217728},
        "pids": {"limit": 256}, "cpu": {"quota": 50000, "period": 100000}}
    assert [n["type"] for n in cfg["linux"]["namespaces"]] == ["pid", "network", "ipc", "uts",
                                                              "mount"]
    assert "/proc/kcore" in cfg["linux"]["maskedPaths"]
    dests = {m["destination"]: m for m in cfg["mounts"]}
    assert dests["/tmp"]["type"] == "tmpfs"
    assert dests["/data"] == {"destination": "/data", "type": "bind", "source": "/v/data",
                              "options": ["rbind", "nosuid", "nodev", "rw"]}
    assert dests["/run/secrets/pw"]["options"] == ["bind", "ro", "nosuid", "nodev", "noexec"]


def test_no_limits_when_unset_and_command_override():
    cfg = render_config(IMAGE, D({"command": ["/bin/sh"], "resources": {"memory": None}}), B)
    assert cfg["process"]["args"] == ["/bin/sh"]
    assert cfg["linux"]["resources"] == {"devices": [{"allow": False, "access": "rwm"}]}


def test_non_root_user_gets_no_effective_caps():
    cfg = render_config(IMAGE, D({}), BundleInput("x", "x", "/r", "/orch/x", uid=1000, gid=1000))
    assert cfg["process"]["capabilities"]["effective"] == []
    assert cfg["process"]["user"] == {"uid": 1000, "gid": 1000}


def test_missing_command_is_an_error():
    with pytest.raises(ValueError):
        render_config({"config": {}}, D({}), B)


def test_env_defaults_path():
    assert env_of({}, {"X": "1"}) == [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "X=1"]


@pytest.mark.parametrize("user,expected", [
    ("", (0, 0)), ("0", (0, 0)), ("nobody", (65534, 65534)), ("1234", (1234, 0)),
    ("nobody:root", (65534, 0)), ("1:2", (1, 2))])
def test_resolve_user(tmp_path, user, expected):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0::/:/bin/sh\nnobody:x:65534:65534::/:/x\n")
    (tmp_path / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
    assert resolve_user(str(tmp_path), user) == expected


def test_resolve_user_unknown(tmp_path):
    with pytest.raises(ValueError):
        resolve_user(str(tmp_path), "ghost")


def test_init_runs_as_pid_1_bound_read_only_from_the_host():
    b = BundleInput(container_id="c", hostname="web", rootfs="/c/rootfs", cgroups_path="/orch/c",
                    init="/usr/bin/tini-static")
    cfg = render_config(IMAGE, D({}), b)
    assert cfg["process"]["args"] == ["/dev/init", "--", "/bin/busybox", "httpd", "-f"]
    init = [m for m in cfg["mounts"] if m["destination"] == "/dev/init"]
    assert init == [{"destination": "/dev/init", "type": "bind", "source": "/usr/bin/tini-static",
                     "options": ["bind", "ro", "nosuid", "nodev"]}]
    # mounted after /dev's tmpfs, or that tmpfs would hide it
    dests = [m["destination"] for m in cfg["mounts"]]
    assert dests.index("/dev/init") > dests.index("/dev")


def test_no_init_keeps_the_image_command_as_pid_1():
    cfg = render_config(IMAGE, D({}), B)
    assert cfg["process"]["args"] == ["/bin/busybox", "httpd", "-f"]
    assert "/dev/init" not in [m["destination"] for m in cfg["mounts"]]
