"""build_services on scratch bases: determinism, the layer cache, OCI tools accept the output."""
import gzip
import io
import json
import os
import subprocess
import tarfile

import pytest

from orchestrator.image import build_services
from orchestrator.cli import main
from orchestrator.manifest import load_desired
from orchestrator.image.store import Store
from tests.image.conftest import write_tree

APP = """\
kind: Service
name: app
image:
  from: scratch
  platforms: [linux/amd64, linux/arm64, linux/arm/v7]
  steps:
    - copy: {src: lib, dest: /opt/lib}
    - copy: {src: app, dest: /opt/app, owner: "1000:1000"}
    - template: {src: conf.j2, dest: /etc/app.conf, mode: "0600"}
  cmd: [/opt/app/run]
  env: {GREETING: hi}
  labels: {org.example.version: "{{ version }}"}
  expose: [8000]
"""


def project(tmp_path, **extra):
    files = {"m/app.yaml": "vars: {version: '1'}\n" + APP, "m/lib/util.txt": "util\n",
             "m/app/run": "#!/bin/sh\necho run\n", "m/app/data/a.txt": "a\n", "m/conf.j2": "v={{ version }}\n"}
    files.update(extra)
    d = write_tree(tmp_path, files)
    os.chmod(os.path.join(d, "m/app/run"), 0o755)
    return os.path.join(d, "m")


def layer_members(store, digest):
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(store.read_bytes(digest)))) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_same_inputs_same_digests_in_fresh_stores(tmp_path, home):
    src = project(tmp_path)
    one = build_services(load_desired(src, {}), Store(str(tmp_path / "a" / "store")))["app"]
    two = build_services(load_desired(src, {}), Store(str(tmp_path / "b" / "store")))["app"]
    assert one.index_digest == two.index_digest and dict(one.manifests) == dict(two.manifests)
    again = build_services(load_desired(src, {}), Store(str(tmp_path / "a" / "store")))["app"]
    assert again.index_digest == one.index_digest
    assert all(i.built == 0 and i.cached == 3 for i in again.images.values())


def test_one_file_change_rebuilds_only_its_layer(tmp_path, home):
    src = project(tmp_path)
    before = build_services(load_desired(src, {}), home)["app"].images["linux/arm64"]
    with open(os.path.join(src, "lib/util.txt"), "w") as fh:
        fh.write("util v2\n")
    after = build_services(load_desired(src, {}), home)["app"].images["linux/arm64"]
    old, new = [l["digest"] for l in before.layers], [l["digest"] for l in after.layers]
    assert old[0] != new[0] and old[1:] == new[1:]      # later layers rebuilt, same bytes
    assert (after.built, after.cached) == (3, 0)       # lib is the first step: everything after rebuilds
    # the app directory is the second step: changing it keeps the first layer
    with open(os.path.join(src, "app/data/a.txt"), "w") as fh:
        fh.write("a v2\n")
    third = build_services(load_desired(src, {}), home)["app"].images["linux/arm64"]
    d3 = [l["digest"] for l in third.layers]
    assert d3[0] == new[0] and d3[1] != new[1] and d3[2] == new[2]
    assert (third.built, third.cached) == (2, 1)


def test_top_layer_change_only(tmp_path, home):
    src = project(tmp_path)
    before = build_services(load_desired(src, {}), home)["app"]
    after = build_services(load_desired(src, {"version": "2"}), home)["app"]
    for p in before.manifests:
        b, a = before.images[p], after.images[p]
        assert [l["digest"] for l in b.layers][:2] == [l["digest"] for l in a.layers][:2]
        assert b.layers[2]["digest"] != a.layers[2]["digest"] and (a.built, a.cached) == (1, 2)


def test_source_date_epoch(tmp_path, home, monkeypatch):
    src = project(tmp_path)
    zero = build_services(load_desired(src, {}), home)["app"].index_digest
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    other = build_services(load_desired(src, {}), Store(str(tmp_path / "x" / "store")))["app"]
    assert other.index_digest != zero
    layer = other.images["linux/amd64"].layers[0]["digest"]
    assert {m.mtime for m in layer_members(Store(str(tmp_path / "x" / "store")), layer).values()} == {1700000000}


def test_layer_contents_modes_owner_and_config(tmp_path, home):
    src = project(tmp_path)
    img = build_services(load_desired(src, {}), home)["app"].images["linux/arm/v7"]
    lib, app, conf = (layer_members(home, l["digest"]) for l in img.layers)
    assert sorted(lib) == ["opt", "opt/lib", "opt/lib/util.txt"]
    assert (app["opt/app/run"].mode, app["opt/app/run"].uid, app["opt/app/run"].gid) == (0o755, 1000, 1000)
    assert app["opt/app/data/a.txt"].mode == 0o644 and "opt" not in app       # parent exists below
    assert conf["etc/app.conf"].mode == 0o600 and conf["etc"].mode == 0o755
    config = home.read_json(home.read_json(img.manifest_digest)["config"]["digest"])
    assert (config["architecture"], config["variant"], config["created"]) == ("arm", "v7", "1970-01-01T00:00:00Z")
    assert config["config"]["Cmd"] == ["/opt/app/run"] and "GREETING=hi" in config["config"]["Env"]
    assert config["config"]["Labels"] == {"org.example.version": "1"}
    assert config["config"]["ExposedPorts"] == {"8000/tcp": {}}
    assert len(config["rootfs"]["diff_ids"]) == 3


@pytest.mark.parametrize("platform,arch,variant", [("linux/amd64", "amd64", None), ("linux/arm64", "arm64", None),
                                                  ("linux/arm/v7", "arm", "v7")])
def test_skopeo_inspect_and_umoci_unpack_accept_each_platform(tmp_path, home, platform, arch, variant):
    src = project(tmp_path)
    built = build_services(load_desired(src, {}), home)["app"]
    sel = ["--override-arch", arch] + (["--override-variant", variant] if variant else [])
    out = subprocess.run(["skopeo", *sel, "inspect", f"oci:{home.root}:app"], capture_output=True, check=True)
    info = json.loads(out.stdout)
    assert info["Architecture"] == arch and len(info["Layers"]) == 3
    raw = subprocess.run(["skopeo", *sel, "inspect", "--raw", f"oci:{home.root}:app"], capture_output=True, check=True)
    assert json.loads(raw.stdout)["manifests"][0]["digest"] == built.manifests["linux/amd64"]
    single = tmp_path / "single"
    subprocess.run(["skopeo", *sel, "copy", "-q", f"oci:{home.root}:app", f"oci:{single}:one"], check=True)
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{single}:one", str(bundle)], check=True, capture_output=True)
    assert (bundle / "rootfs" / "opt" / "app" / "run").read_text() == "#!/bin/sh\necho run\n"
    assert (bundle / "rootfs" / "etc" / "app.conf").read_text() == "v=1\n"
    spec = json.loads((bundle / "config.json").read_text())
    assert spec["process"]["args"] == ["/opt/app/run"]


def test_cli_build_json_and_out(tmp_path, home, capsys):
    src = project(tmp_path)
    out = tmp_path / "out"
    assert main(["build", src, "--json", "--out", str(out), "--platform", "linux/arm64"]) == 0
    res = json.loads(capsys.readouterr().out)["services"]["app"]
    assert list(res["manifests"]) == ["linux/arm64"]
    index = json.loads((out / "index.json").read_text())
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "app"
    assert index["manifests"][0]["digest"] == res["index"]
    subprocess.run(["skopeo", "inspect", "--override-arch", "arm64", f"oci:{out}:app"], check=True, capture_output=True)


def test_cli_bad_manifest_writes_nothing(tmp_path, home, capsys):
    src = project(tmp_path, **{"m/bad.yaml": "kind: Service\nname: bad\nimage: {from: scratch}\ndeploy: {ports: ['80']}\n"})
    out = tmp_path / "out"
    assert main(["build", src, "--out", str(out)]) == 3
    err = capsys.readouterr().err
    assert 'services/bad/deploy/ports/0: expected "HOST:CONTAINER", got "80"' in err
    assert not out.exists() and not os.path.exists(os.environ["ORCH_HOME"])
    assert not os.path.exists(os.path.join(src, "orch.lock"))


def test_secrets_never_reach_a_blob(tmp_path, home, monkeypatch):
    secret = "orch-test-secret-value-7f3a"
    monkeypatch.setenv("ORCH_TEST_SECRET", secret)
    text = APP + "deploy:\n  secrets:\n    token: {env: ORCH_TEST_SECRET}\n    key: {file: key.txt}\n"
    src = project(tmp_path, **{"m/app.yaml": "vars: {version: '1'}\n" + text, "m/key.txt": secret + "-file"})
    desired = load_desired(src, {})
    build_services(desired, home)
    assert desired.services["app"].deploy.read_secrets()["token"] == secret.encode()
    for name in os.listdir(os.path.join(home.root, "blobs", "sha256")):
        data = open(os.path.join(home.root, "blobs", "sha256", name), "rb").read()
        for blob in (data, gzip.decompress(data) if data[:2] == b"\x1f\x8b" else b""):
            assert secret.encode() not in blob


def test_copies_and_templates_build_without_importing_the_sandbox(tmp_path):
    """Only a run step needs runc and binfmt: a change to copied files imports neither."""
    import sys
    src = project(tmp_path)
    code = ("import sys\nfrom orchestrator.image import build_services\n"
            "from orchestrator.manifest import load_desired\nfrom orchestrator.image.store import Store\n"
            f"b = build_services(load_desired({src!r}, {{}}), Store({str(tmp_path / 'store')!r}))['app']\n"
            "print(sum(i.built for i in b.images.values()), 'orchestrator.image.sandbox' in sys.modules,"
            " 'runtime.bundle' in sys.modules)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, ORCH_HOME=str(tmp_path / "home")))
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["9", "False", "False"]
