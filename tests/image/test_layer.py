"""Deterministic layer tars: same entries -> same bytes; header fields normalised; whiteouts."""
import gzip
import io
import os
import tarfile

from orchestrator.image.layer import Entry, ancestor_dirs, source_date_epoch, walk_tree, write_layer
from orchestrator.image.store import Store


def members(store, layer):
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(store.read_bytes(layer.digest)))) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_same_entries_same_bytes_in_any_order(tmp_path):
    a, b = Store(str(tmp_path / "a")).ensure(), Store(str(tmp_path / "b")).ensure()
    entries = [Entry("srv", "dir", 0o755), Entry("srv/x", "file", 0o644, data=b"x"),
               Entry("srv/l", "symlink", 0o777, linkname="x")]
    la = write_layer(a, entries, 0)
    lb = write_layer(b, list(reversed(entries)), 0)
    assert la == lb
    assert a.read_bytes(la.digest) == b.read_bytes(lb.digest)
    raw = a.read_bytes(la.digest)
    assert raw[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"      # no name, mtime 0, OS unknown
    import hashlib
    assert la.diff_id == "sha256:" + hashlib.sha256(gzip.decompress(raw)).hexdigest()
    assert list(members(a, la)) == ["srv", "srv/l", "srv/x"]


def test_epoch_and_owner_fields(tmp_path):
    s = Store(str(tmp_path / "s")).ensure()
    layer = write_layer(s, [Entry("f", "file", 0o600, 1000, 100, data=b"hi")], 1700000000)
    m = members(s, layer)["f"]
    assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (1700000000, 1000, 100, "", "", 0o600)
    assert write_layer(s, [Entry("f", "file", 0o600, 1000, 100, data=b"hi")], 0).digest != layer.digest


def test_source_date_epoch():
    assert source_date_epoch({"SOURCE_DATE_EPOCH": "1234"}) == 1234
    assert source_date_epoch({}) == 0
    assert source_date_epoch({"SOURCE_DATE_EPOCH": "junk"}) == 0


def test_walk_tree_keeps_modes_hardlinks_and_turns_overlay_whiteouts_into_markers(tmp_path):
    root = tmp_path / "upper"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "a").write_bytes(b"A")
    os.chmod(root / "bin" / "a", 0o4755)
    os.link(root / "bin" / "a", root / "bin" / "b")
    os.mknod(root / "gone", 0o600 | 0o020000, os.makedev(0, 0))     # overlayfs whiteout
    (root / "opaque").mkdir()
    os.setxattr(root / "opaque", "trusted.overlay.opaque", b"y")
    got = {e.path: e for e in walk_tree(str(root), overlay_upper=True)}
    assert got["bin/a"].type == "file" and got["bin/a"].mode == 0o4755
    assert got["bin/b"].type == "hardlink" and got["bin/b"].linkname == "bin/a"
    assert ".wh.gone" in got and "gone" not in got
    assert "opaque/.wh..wh..opq" in got


def test_ancestor_dirs_only_for_missing_parents():
    assert [e.path for e in ancestor_dirs("/srv/www/app/x", {"srv"})] == ["srv/www", "srv/www/app"]
    assert ancestor_dirs("/x", set()) == []
