"""Image unpack: layers in order, whiteouts, opaque dirs, and refusal of escaping entries."""
import io
import os
import tarfile

import pytest

from runtime import protocol, store, unpack
from runtime.errors import DigestMismatch, UnsafeImage
from runtime.layout import Layout
from tests.runtime import imagekit as ik


def layer(*entries, gz=False):
    return ik.tar_bytes(list(entries), gz=gz)


def dev(name):
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.CHRTYPE
    ti.devmajor, ti.devminor = 1, 3
    return ti, None


@pytest.mark.parametrize("entry,what", [
    (ik.file_entry("../evil", b"x"), "escapes the root"),
    (ik.file_entry("a/../../evil", b"x"), "escapes the root"),
    (ik.file_entry("/etc/evil", b"x"), "absolute path"),
    (ik.link_entry("bin/x", "../../../etc/shadow"), "symlink escapes"),
    (ik.link_entry("x", ".."), "symlink escapes"),
    (ik.link_entry("bin/x", "/etc/passwd", hard=True), "hardlink escapes"),
    (ik.link_entry("bin/x", "../../etc/passwd", hard=True), "hardlink escapes"),
    (dev("dev/null"), "device node"),
])
def test_unsafe_entries_are_refused(tmp_path, entry, what):
    root = tmp_path / "rootfs"
    root.mkdir()
    with pytest.raises(UnsafeImage, match=what):
        unpack.apply_layer(str(root), io.BytesIO(layer(ik.dir_entry("bin"), entry)))
    assert not (tmp_path / "evil").exists()


def test_absolute_symlinks_are_resolved_inside_the_root(tmp_path):
    root = tmp_path / "rootfs"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    # an absolute link to the host's dir, then a file written "through" it
    data = layer(ik.link_entry("link", str(outside)), ik.file_entry("link/pwned", b"x"))
    unpack.apply_layer(str(root), io.BytesIO(data))
    assert not (outside / "pwned").exists()
    assert (root / outside.relative_to("/") / "pwned").exists()
    assert os.readlink(root / "link") == str(outside)


def test_layers_whiteouts_and_opaque_dirs(tmp_path):
    root = tmp_path / "rootfs"
    root.mkdir()
    l1 = layer(ik.dir_entry("etc"), ik.file_entry("etc/a", b"1"), ik.file_entry("etc/b", b"1"),
               ik.dir_entry("var"), ik.file_entry("var/old", b"1"),
               ik.file_entry("bin-x", b"#!", 0o4755))
    l2 = layer(ik.file_entry("etc/.wh.a", b""), ik.file_entry("etc/b", b"2"),
               ik.dir_entry("var"), ik.file_entry("var/new", b"2"),
               ik.file_entry("var/.wh..wh..opq", b""), gz=True)
    for x in (l1, l2):
        unpack.apply_layer(str(root), io.BytesIO(x))
    assert sorted(os.listdir(root / "etc")) == ["b"]
    assert (root / "etc/b").read_bytes() == b"2"
    assert sorted(os.listdir(root / "var")) == ["new"]
    assert unpack.mode_of(str(root / "bin-x")) == 0o4755


def test_truncated_layer_is_refused(tmp_path):
    root = tmp_path / "rootfs"
    root.mkdir()
    data = layer(ik.file_entry("big", os.urandom(100000)), gz=True)
    with pytest.raises(UnsafeImage, match="truncated or corrupt"):
        unpack.apply_layer(str(root), io.BytesIO(data[: len(data) // 2]))


def _store(lay, blobs):
    for d, data in blobs.items():
        store.receive(lay, io.BytesIO(protocol.frame_header(d, len(data)) + data))


def test_unpack_image_verifies_layers_and_leaves_nothing_on_failure(tmp_path):
    lay = Layout(str(tmp_path / "root"), str(tmp_path / "run"))
    lay.ensure()
    img = ik.make_image({"linux/amd64": [layer(ik.file_entry("hello", b"hi"), gz=True)]})
    _store(lay, img.blobs)
    m = img.manifests["linux/amd64"]
    layer_digest = [d for d, v in img.blobs.items() if v[:2] == b"\x1f\x8b"][0]
    path = lay.blob(protocol.split_digest(layer_digest))
    good = open(path, "rb").read()
    open(path, "wb").write(layer(ik.file_entry("hello", b"ho"), gz=True))  # corrupted on disk
    with pytest.raises(DigestMismatch):
        unpack.unpack_image(lay, m)
    assert os.listdir(lay.images) == []
    open(path, "wb").write(good)
    assert not os.listdir(os.path.join(lay.root, "layers"))      # no half-unpacked layer
    unpack.unpack_image(lay, m)
    [top] = unpack.lowerdirs(lay, m)
    assert open(os.path.join(top, "hello"), "rb").read() == b"hi"
    assert unpack.is_unpacked(lay, m)


def test_select_manifest():
    idx = {"manifests": [
        {"digest": "a", "platform": {"os": "linux", "architecture": "amd64"}},
        {"digest": "b", "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        {"digest": "c", "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}}]}
    assert unpack.select_manifest(idx, "linux/amd64") == "a"
    assert unpack.select_manifest(idx, "linux/arm64") == "b"
    assert unpack.select_manifest(idx, "linux/arm/v7") == "c"


def test_a_dir_replaced_by_a_link_later_in_the_layer_does_not_leak_metadata(tmp_path):
    root = tmp_path / "rootfs"
    root.mkdir()
    outside = tmp_path / "outside"
    (outside / "b").mkdir(parents=True)
    os.chmod(outside / "b", 0o755)
    data = layer(ik.dir_entry("a", 0o755), ik.dir_entry("a/b", 0o700),
                 ik.file_entry(".wh.a", b""), ik.link_entry("a", str(outside)))
    unpack.apply_layer(str(root), io.BytesIO(data))
    assert unpack.mode_of(str(outside / "b")) == 0o755
    assert os.readlink(root / "a") == str(outside)


def test_a_layer_whose_diff_id_lies_is_refused_named(tmp_path):
    """The config's diff_id is the hash of the uncompressed tar: a layer whose gzip blob is
    intact (its digest matches) but whose config names another diff_id is refused, with the
    image, the layer and both hashes named, and nothing is left unpacked."""
    lay = Layout(str(tmp_path / "root"), str(tmp_path / "run"))
    lay.ensure()
    good = layer(ik.file_entry("a", b"1"), gz=True)
    liar = layer(ik.file_entry("b", b"2"), gz=True)
    claimed = ik.digest(b"something else")
    ids = {good: ik.diff_id(good), liar: claimed}
    img = ik.make_image({"linux/amd64": [good, liar]}, diff_ids=ids.__getitem__)
    _store(lay, img.blobs)
    m = img.manifests["linux/amd64"]
    with pytest.raises(DigestMismatch) as exc:
        unpack.unpack_image(lay, m)
    msg = str(exc.value)
    assert f"image {m} layer 2/2 {ik.digest(liar)}" in msg
    assert claimed in msg and ik.diff_id(liar) in msg and "diff_id" in msg
    assert os.listdir(lay.images) == []
    # the honest layer below it is whole in the store; the liar left nothing
    assert os.listdir(os.path.join(lay.root, "layers")) == [ik.diff_id(good)[7:]]


def test_a_config_with_the_wrong_number_of_diff_ids_is_refused(tmp_path):
    lay = Layout(str(tmp_path / "root"), str(tmp_path / "run"))
    lay.ensure()
    one = layer(ik.file_entry("a", b"1"), gz=True)
    img = ik.make_image({"linux/amd64": [one, one]})
    cfg_digest = [d for d, v in img.blobs.items() if b'"diff_ids"' in v][0]
    import json
    cfg = json.loads(img.blobs.pop(cfg_digest))
    cfg["rootfs"]["diff_ids"] = cfg["rootfs"]["diff_ids"][:1]
    # rebuild manifest + index around the shortened config
    data = json.dumps(cfg, sort_keys=True).encode()
    man_digest = img.manifests["linux/amd64"]
    man = json.loads(img.blobs.pop(man_digest))
    man["config"].update(digest=ik.digest(data), size=len(data))
    mb = json.dumps(man, sort_keys=True).encode()
    img.blobs[ik.digest(data)] = data
    img.blobs[ik.digest(mb)] = mb
    _store(lay, img.blobs)
    with pytest.raises(DigestMismatch, match="1 diff_ids for 2 layers"):
        unpack.unpack_image(lay, ik.digest(mb))
    assert os.listdir(lay.images) == []
