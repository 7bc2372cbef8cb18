"""The layer store: each layer unpacked once by diff_id, in overlay's form; images as lists of
layers; flattening when an image is too deep for one overlay; collecting unused layers."""
import io
import os
import stat

import pytest

from runtime import layers, protocol, store, unpack
from runtime.layout import Layout
from tests.runtime import imagekit as ik


def layer(*entries, gz=True):
    return ik.tar_bytes(list(entries), gz=gz)


@pytest.fixture
def lay(tmp_path):
    lay = Layout(str(tmp_path / "root"), str(tmp_path / "run"))
    lay.ensure()
    return lay


def put(lay, img):
    for d, data in img.blobs.items():
        store.receive(lay, io.BytesIO(protocol.frame_header(d, len(data)) + data))
    return img.manifests["linux/amd64"]


BASE = layer(ik.dir_entry("etc"), ik.file_entry("etc/a", b"1"), ik.dir_entry("tmp", 0o1777),
             ik.dir_entry("usr"), ik.dir_entry("usr/lib"), ik.file_entry("usr/lib/x", b"x"),
             ik.link_entry("lib", "usr/lib"), ik.dir_entry("var"),
             ik.file_entry("var/old", b"o"), ik.file_entry("etc/big", b"B" * 1000))


def test_a_second_release_sharing_the_base_unpacks_only_its_own_layer(lay):
    m1 = put(lay, ik.make_image({"linux/amd64": [BASE, layer(ik.file_entry("app", b"1"))]}))
    m2 = put(lay, ik.make_image({"linux/amd64": [BASE, layer(ik.file_entry("app", b"2"))]}))
    unpack.unpack_image(lay, m1)
    base_dir = layers.fs_of(lay, ik.diff_id(BASE))
    before = os.stat(base_dir)
    ino = os.stat(os.path.join(base_dir, "etc", "a")).st_ino
    unpack.unpack_image(lay, m2)
    after = os.stat(base_dir)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert os.stat(os.path.join(base_dir, "etc", "a")).st_ino == ino
    assert len(os.listdir(layers.root_of(lay))) == 3            # base + two app layers
    top, bottom = unpack.lowerdirs(lay, m2)
    assert bottom == base_dir
    assert open(os.path.join(top, "app"), "rb").read() == b"2"


def test_whiteouts_opaque_dirs_and_implied_parents_take_overlay_form(lay):
    upper = layer(ik.file_entry("etc/.wh.a", b""), ik.file_entry("tmp/new", b"n"),
                  ik.file_entry("lib/y", b"y"), ik.dir_entry("var"),
                  ik.file_entry("var/.wh..wh..opq", b""), ik.file_entry("var/new", b"v"),
                  ik.link_entry("etc/big2", "etc/big", hard=True))
    m = put(lay, ik.make_image({"linux/amd64": [BASE, upper]}))
    unpack.unpack_image(lay, m)
    top, _ = unpack.lowerdirs(lay, m)
    st = os.lstat(os.path.join(top, "etc", "a"))             # whiteout: a 0/0 char device
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(os.path.join(top, "var"), "trusted.overlay.opaque") == b"y"
    assert sorted(os.listdir(os.path.join(top, "var"))) == ["new"]
    # /tmp only implied by tmp/new: it keeps the base's mode, not 0755
    assert stat.S_IMODE(os.stat(os.path.join(top, "tmp")).st_mode) == 0o1777
    # lib -> usr/lib in the base: lib/y lands in usr/lib, lib stays the base's symlink
    assert open(os.path.join(top, "usr", "lib", "y"), "rb").read() == b"y"
    assert not os.path.lexists(os.path.join(top, "lib"))
    # a hardlink to a file of a lower layer: a copy of its own in this layer
    assert open(os.path.join(top, "etc", "big2"), "rb").read() == b"B" * 1000


def test_an_image_too_deep_for_one_overlay_is_flattened_from_the_store(lay, monkeypatch):
    monkeypatch.setattr(layers, "MAX_LOWERS", 2)
    upper = layer(ik.file_entry("etc/.wh.a", b""), ik.dir_entry("var"),
                  ik.file_entry("var/.wh..wh..opq", b""), ik.file_entry("var/new", b"v"),
                  ik.file_entry("lib/y", b"y"), ik.file_entry("tmp/t", b"t"))
    m = put(lay, ik.make_image({"linux/amd64": [BASE, layer(ik.file_entry("f1", b"1")), upper]}))
    unpack.unpack_image(lay, m)
    [root] = unpack.lowerdirs(lay, m)
    assert root == os.path.join(unpack.image_dir(lay, m), "rootfs")
    assert sorted(os.listdir(root)) == ["etc", "f1", "lib", "tmp", "usr", "var"]
    assert sorted(os.listdir(os.path.join(root, "etc"))) == ["big"]
    assert sorted(os.listdir(os.path.join(root, "var"))) == ["new"]
    assert os.readlink(os.path.join(root, "lib")) == "usr/lib"
    assert sorted(os.listdir(os.path.join(root, "usr", "lib"))) == ["x", "y"]
    assert stat.S_IMODE(os.stat(os.path.join(root, "tmp")).st_mode) == 0o1777


def test_a_long_mount_option_is_flattened_too(lay):
    ids = [ik.digest(b"%d" % i) for i in range(60)]       # 60 x ~90 bytes > one page
    assert not layers.fits_overlay(lay, ids)
    assert layers.fits_overlay(lay, ids[:10])
    assert not layers.fits_overlay(lay, [])


def test_an_image_whose_layer_was_collected_asks_for_it_and_is_unpacked_again(lay):
    top = layer(ik.file_entry("app", b"1"))
    img = ik.make_image({"linux/amd64": [BASE, top]})
    m = put(lay, img)
    unpack.unpack_image(lay, m)
    assert layers.collect(lay, [ik.diff_id(BASE)]) == [ik.diff_id(top)]
    assert not unpack.is_unpacked(lay, m)
    assert store.have(lay, [ik.digest(BASE), ik.digest(top)])["present"] == [ik.digest(BASE)]
    put(lay, img)                                          # the orchestrator sends it again
    unpack.unpack_image(lay, m)
    assert unpack.is_unpacked(lay, m)


def test_the_budget_counts_what_one_image_unpacks_now(lay):
    big = layer(ik.file_entry("big", b"z" * 5000))
    m = put(lay, ik.make_image({"linux/amd64": [BASE, big]}))
    from runtime.errors import UnsafeImage
    with pytest.raises(UnsafeImage, match=f"layer 2/2 {ik.digest(big)}.*budget"):
        unpack.unpack_image(lay, m, unpack.Budget(max_bytes=4000))
    assert os.listdir(layers.root_of(lay)) == [ik.diff_id(BASE)[7:]]
    assert os.listdir(lay.images) == []


def test_a_stored_layer_stands_for_its_blob(lay):
    top1, top2 = layer(ik.file_entry("app", b"1")), layer(ik.file_entry("app", b"2"))
    m1 = put(lay, ik.make_image({"linux/amd64": [BASE, top1]}))
    unpack.unpack_image(lay, m1)
    assert not os.path.exists(lay.blob(ik.digest(BASE)[7:]))   # the base blob is gone
    assert store.have(lay, [ik.digest(BASE)])["present"] == [ik.digest(BASE)]
    img2 = ik.make_image({"linux/amd64": [BASE, top2]})
    for d, data in img2.blobs.items():
        if d != ik.digest(BASE):
            store.receive(lay, io.BytesIO(protocol.frame_header(d, len(data)) + data))
    from runtime import admission
    manifest = img2.manifests["linux/amd64"]
    assert all(d in store.have(lay, admission.blobs_of(lay, manifest))["present"]
               for d in admission.blobs_of(lay, manifest))
    unpack.unpack_image(lay, manifest)
    top, bottom = unpack.lowerdirs(lay, manifest)
    assert open(os.path.join(top, "app"), "rb").read() == b"2"


def test_a_layer_is_kept_once_on_disk_its_blob_goes_once_it_is_unpacked(lay):
    """A Pi's SD card holds each layer once: the compressed blob goes once the layer store
    holds the layer (verified against its digest and diff_id); the host still answers that it
    has it, and the image's manifest and config stay."""
    top = layer(ik.file_entry("app", b"1"))
    img = ik.make_image({"linux/amd64": [BASE, top]})
    m = put(lay, img)
    unpack.unpack_image(lay, m)
    for blob in (BASE, top):
        assert not os.path.exists(lay.blob(ik.digest(blob)[7:]))
    assert store.have(lay, [ik.digest(BASE), ik.digest(top)])["present"] == [ik.digest(BASE), ik.digest(top)]
    from runtime import admission
    wanted = admission.blobs_of(lay, m)                    # reads the manifest and config
    assert {ik.digest(BASE), ik.digest(top)} < set(wanted)
    assert store.have(lay, wanted)["present"] == wanted
    assert unpack.is_unpacked(lay, m)


def test_serves_snapshot_counts_a_stored_layer_as_its_blob(lay):
    """A no-op reads serve's snapshot: a layer whose blob went after unpacking is still there."""
    from runtime import agent, snapshot, supervisor
    top = layer(ik.file_entry("app", b"1"))
    m = put(lay, ik.make_image({"linux/amd64": [BASE, top]}))
    unpack.unpack_image(lay, m)
    supervisor.run_write_snapshot(agent.make_host(lay))
    with open(snapshot.path(lay.run), "rb") as f:
        seen = snapshot.parse_read(f.read() + open("/proc/uptime", "rb").read())
    assert {ik.digest(BASE), ik.digest(top), m} <= set(seen["have"]["present"])
