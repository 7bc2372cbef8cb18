"""The debian base: mmdebstrap --variant=extract for the target arch, a lock of versions, determinism."""
import gzip
import io
import json
import os
import shutil
import subprocess
import tarfile

import pytest

from orchestrator.image import build_services
from orchestrator.image.debian import (lock_key, mmdebstrap_argv, parse_deb_names, parse_sources,
                                       render_pin_preferences)
from orchestrator.errors import BuildError
from orchestrator.manifest import load_desired
from orchestrator.image.store import Store

ELF_MACHINE = {b"\x3e\x00": "x86_64", b"\xb7\x00": "aarch64", b"\x28\x00": "arm"}


def base_members(store, manifest_digest):
    layer = store.read_json(manifest_digest)["layers"][0]["digest"]
    tar = tarfile.open(fileobj=io.BytesIO(gzip.decompress(store.read_bytes(layer))))
    return tar, {m.name: m for m in tar.getmembers()}


def test_mmdebstrap_argv_requests_locked_versions():
    argv = mmdebstrap_argv("bookworm", "arm64", ["busybox-static"], None, "/t", "/l", ["deb http://m bookworm main"])
    assert argv[:4] == ["mmdebstrap", "--variant=extract", "--arch=arm64", "--mode=root"]
    assert "--include=busybox-static" in argv and argv[-3:] == ["bookworm", "/t", "deb http://m bookworm main"]
    pinned = mmdebstrap_argv("bookworm", "armhf", ["python3-minimal"], {"python3-minimal": "3.11.2-1+b1", "libc6": "2.36-9"},
                             "/t", "/l")
    assert "--include=libc6=2.36-9,python3-minimal=3.11.2-1+b1" in pinned
    assert not any(a.startswith("--setup-hook") for a in pinned)
    prefs = mmdebstrap_argv("bookworm", "armhf", ["libc6"], {"libc6": "2.36-9"}, "/t", "/l",
                            preferences="/w/orch-lock.pref")
    assert "--setup-hook=copy-in /w/orch-lock.pref /etc/apt/preferences.d" in prefs
    assert '--extract-hook=rm -f "$1"/etc/apt/preferences.d/orch-lock.pref' in prefs
    minbase = mmdebstrap_argv("bookworm", "armhf", ["libc6"], {"libc6": "2.36-9"}, "/t", "/l",
                              variant="minbase", preferences="/w/orch-lock.pref")
    assert '--customize-hook=rm -f "$1"/etc/apt/preferences.d/orch-lock.pref' in minbase


def test_locked_versions_are_pinned_for_the_essential_set_too():
    # the essential set is resolved before --include: pinned there, a locked version older
    # than the mirror's newest is installed as it is, not refused as a downgrade
    assert render_pin_preferences({"libc6": "2.36-9+deb12u10", "base-files": "12.4+deb12u11"}) == (
        "Package: base-files\nPin: version 12.4+deb12u11\nPin-Priority: 1001\n\n"
        "Package: libc6\nPin: version 2.36-9+deb12u10\nPin-Priority: 1001\n\n")
    assert lock_key("bookworm", "armhf", ["b", "a"]) == "bookworm/armhf/a+b"


def test_parse_deb_names_and_sources():
    assert parse_deb_names("zlib1g_1%3a1.2.13.dfsg-1_arm64.deb\nlock\npartial\ntar_1.34_arm64.deb\n") == \
        {"zlib1g": "1:1.2.13.dfsg-1", "tar": "1.34"}
    deb822 = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\n"
    assert parse_sources([deb822], ["deb [arch=amd64] http://x/debian-security bookworm-security main contrib\n"]) == [
        ("http://deb.debian.org/debian", "bookworm", "main"), ("http://deb.debian.org/debian", "bookworm-updates", "main"),
        ("http://x/debian-security", "bookworm-security", "main contrib")]


def test_target_arch_base_without_machine_specific_files(hello):
    store, built = hello["store"], hello["built"]
    for platform, machine in (("linux/amd64", "x86_64"), ("linux/arm64", "aarch64")):
        tar, members = base_members(store, built.manifests[platform])
        head = tar.extractfile("bin/busybox").read(20)
        assert head[:4] == b"\x7fELF" and ELF_MACHINE[head[18:20]] == machine
        for absent in ("etc/resolv.conf", "etc/hostname", "etc/apt/sources.list", "dev/null"):
            assert absent not in members
        assert members["dev"].isdir() and members["tmp"].mode == 0o1777
        assert {m.mtime for m in members.values()} == {0} and {m.uname for m in members.values()} == {""}
    lock = json.load(open(os.path.join(hello["dir"], "orch.lock")))
    for arch in ("amd64", "arm64"):
        assert "busybox-static" in lock["debian"][f"bookworm/{arch}/busybox-static"]


def test_arm64_base_costs_what_amd64_does(hello):
    """No target code runs: the arm64 base is extracted like the amd64 one (no qemu)."""
    base = {e.platform: e.seconds for e in hello["events"] if e.step == 0 and e.state in ("built", "cached")}
    assert not any(e.state == "emulated" for e in hello["events"])
    assert set(base) == {"linux/amd64", "linux/arm64"}


def test_rebuild_elsewhere_with_the_lock_gives_identical_digests(hello, tmp_path):
    """A fresh store and cache (another machine) with the committed lock: byte-identical images."""
    other = build_services(load_desired(hello["dir"], {}), Store(str(tmp_path / "elsewhere" / "store")))["hello"]
    assert other.index_digest == hello["built"].index_digest
    assert dict(other.manifests) == dict(hello["built"].manifests)
    assert all(i.built == 3 for i in other.images.values())       # really rebuilt, not cached


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_default_service_is_read_by_skopeo_and_umoci(hello, tmp_path, arch):
    store = hello["store"]
    ref = f"oci:{store.root}:hello"
    info = json.loads(subprocess.run(["skopeo", "--override-arch", arch, "inspect", ref], capture_output=True,
                                     check=True).stdout)
    assert info["Architecture"] == arch
    subprocess.run(["skopeo", "--override-arch", arch, "copy", "-q", ref, f"oci:{tmp_path}/one:x"], check=True)
    subprocess.run(["umoci", "unpack", "--image", f"{tmp_path}/one:x", str(tmp_path / "b")], check=True,
                   capture_output=True)
    html = (tmp_path / "b" / "rootfs" / "srv" / "www" / "index.html").read_text()
    assert "Hello from orch" in html
    assert json.loads((tmp_path / "b" / "config.json").read_text())["process"]["args"][:2] == ["/bin/busybox", "httpd"]


def test_a_lock_version_gone_from_the_mirror_is_a_clear_error(hello, tmp_path, monkeypatch):
    src = tmp_path / "m"
    shutil.copytree(hello["dir"], src)
    lock = json.load(open(src / "orch.lock"))
    lock["debian"]["bookworm/amd64/busybox-static"]["busybox-static"] = "0.0-orch-test"
    (src / "orch.lock").write_text(json.dumps(lock))
    with pytest.raises(BuildError, match="orch.lock"):
        build_services(load_desired(str(src), {}), Store(str(tmp_path / "h" / "store")), platforms=["linux/amd64"])


def test_update_lock_re_resolves(hello, tmp_path):
    src = tmp_path / "m"
    shutil.copytree(hello["dir"], src)
    lock = json.load(open(src / "orch.lock"))
    good = dict(lock["debian"]["bookworm/amd64/busybox-static"])
    lock["debian"]["bookworm/amd64/busybox-static"]["busybox-static"] = "0.0-orch-test"
    (src / "orch.lock").write_text(json.dumps(lock))
    built = build_services(load_desired(str(src), {}), hello["store"], platforms=["linux/amd64"], update_lock=True)
    assert json.load(open(src / "orch.lock"))["debian"]["bookworm/amd64/busybox-static"] == good
    assert built["hello"].manifests["linux/amd64"] == hello["built"].manifests["linux/amd64"]
