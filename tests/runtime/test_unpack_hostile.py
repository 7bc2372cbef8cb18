"""The one unpacker against hostile layers: budgets enforced while streaming (bytes, files,
disk and inode reserve), sparse files without their holes, oversized headers, errors that
name the image and layer, nothing left behind, and state only root can reach."""
import io
import json
import os
import subprocess
from pathlib import Path

import pytest

from runtime import layers, protocol, store, unpack
from runtime.errors import NoRoom, UnsafeImage
from runtime.layout import Layout
from tests.runtime import hostile
from tests.runtime import imagekit as ik


class Counting(io.RawIOBase):
    """A compressed layer as read: how far the unpacker got before it stopped."""

    def __init__(self, data: bytes):
        self.f = io.BytesIO(data)
        self.read_bytes = 0

    def readable(self):
        return True

    def read(self, n=-1):
        b = self.f.read(n)
        self.read_bytes += len(b)
        return b


def apply(root, data, budget):
    meter = unpack.Meter(str(root), budget)
    src = Counting(data)
    unpack.apply_layer(str(root), src, meter=meter)
    return src


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "rootfs"
    r.mkdir()
    return r


def used_bytes(path) -> int:
    total = 0
    for d, dirs, files in os.walk(path):
        for n in files:
            total += os.lstat(os.path.join(d, n)).st_blocks * 512
    return total


def test_a_zeros_bomb_is_stopped_before_its_first_byte_is_written(root):
    bomb = hostile.zeros_bomb(1 << 30)                     # ~1 MB of gzip -> 1 GiB
    src = Counting(bomb)
    with pytest.raises(UnsafeImage, match=r"'zeros'.*more than 8388608 bytes"):
        unpack.apply_layer(str(root), src, meter=unpack.Meter(str(root), unpack.Budget(
            max_bytes=8 << 20)))
    assert used_bytes(root) == 0
    assert src.read_bytes < len(bomb) // 10               # stopped early, not after the fact


def test_many_files_of_zeros_are_stopped_at_the_budget(root):
    bomb = hostile.zeros_bomb(64 << 20, files=64)          # 64 files of 1 MiB
    src = Counting(bomb)
    with pytest.raises(UnsafeImage, match="more than 8388608 bytes"):
        unpack.apply_layer(str(root), src, meter=unpack.Meter(str(root), unpack.Budget(
            max_bytes=8 << 20)))
    assert used_bytes(root) <= 8 << 20
    assert src.read_bytes < len(bomb) // 2


def test_the_file_count_is_a_budget(root):
    with pytest.raises(UnsafeImage, match="more than 300 files"):
        apply(root, hostile.empty_files(800), unpack.Budget(max_files=300))
    assert sum(len(f) + len(d) for _, d, f in os.walk(root)) == 300


@pytest.fixture
def small_fs(tmp_path):
    """A tmpfs of 32 MiB and 800 inodes of its own (the machine's disks are shared)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m,nr_inodes=800", "tmpfs", str(mnt)],
                   check=True)
    try:
        (mnt / "rootfs").mkdir()
        yield mnt / "rootfs"
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_the_disk_reserve_is_kept(small_fs):
    with pytest.raises(NoRoom, match=r"'zeros-1'.*leave less than 50% of the disk free"):
        apply(small_fs, hostile.zeros_bomb(32 << 20, files=2), unpack.Budget(
            reserve_percent=50))
    assert used_bytes(small_fs) == 16 << 20                # the first file fitted


def test_the_inode_reserve_is_kept(small_fs):
    with pytest.raises(NoRoom, match="inodes"):
        apply(small_fs, hostile.empty_files(1000), unpack.Budget(reserve_inodes_percent=25))
    assert 550 < sum(len(f) + len(d) for _, d, f in os.walk(small_fs)) <= 600


@pytest.mark.parametrize("fmt", ["gnu", "pax"])
def test_sparse_files_are_written_without_their_holes(root, tmp_path, fmt):
    size = 1 << 30
    data = [(0, b"head"), (300 << 20, b"middle" * 1000), (size - 5, b"tail!")]
    layer = hostile.sparse_layer(str(tmp_path / "src"), size, data, fmt=fmt)
    assert len(layer) < 1 << 20
    apply(root, layer, unpack.Budget(max_bytes=1 << 20))   # holes are not bytes written
    path = root / "sparse"
    assert path.stat().st_size == size
    assert path.stat().st_blocks * 512 < 1 << 20
    with open(path, "rb") as f:
        for off, chunk in data:
            f.seek(off)
            assert f.read(len(chunk)) == chunk
        f.seek(100 << 20)
        assert f.read(4096) == bytes(4096)


def test_an_oversized_header_is_refused_without_reading_it_whole(root):
    with pytest.raises(UnsafeImage, match="header"):
        apply(root, hostile.pax_header_bomb(8 << 20), unpack.Budget())


def test_entries_skip_data_left_unread_without_taking_it_for_a_header():
    data = ik.tar_bytes([ik.file_entry("big", os.urandom(3 << 20)), ik.file_entry("after", b"x"),
                         ik.file_entry("small", b"y" * 100)], gz=False)
    names = [m.name for _, m in unpack.entries(io.BytesIO(data))]
    assert names == ["big", "after", "small"]
    got = {m.name: tf.extractfile(m).read(10) for tf, m in unpack.entries(io.BytesIO(data))}
    assert got["after"] == b"x" and got["small"] == b"y" * 10


def test_whiteouts_with_content_are_refused(root):
    with pytest.raises(UnsafeImage, match="whiteout"):
        apply(root, ik.tar_bytes([ik.file_entry(".wh.x", b"y" * 100)]), unpack.Budget())


# --- unpack_image: named errors, nothing left behind, budgets from the agent's config -----

def _host(tmp_path, blobs):
    lay = Layout(str(tmp_path / "root"), str(tmp_path / "run"), etc=str(tmp_path / "etc"))
    lay.ensure()
    for d, data in blobs.items():
        store.receive(lay, io.BytesIO(protocol.frame_header(d, len(data)) + data))
    return lay


def test_a_bomb_in_an_image_is_named_and_leaves_nothing(tmp_path):
    good = ik.tar_bytes([ik.file_entry("ok", b"fine")])
    bomb = hostile.zeros_bomb(256 << 20)
    img = ik.make_image({"linux/amd64": [good, bomb]},    # the bomb is refused before its diff_id
                        diff_ids=lambda x: ik.digest(x) if x is bomb else ik.diff_id(x))
    lay = _host(tmp_path, img.blobs)
    os.makedirs(lay.etc)
    with open(lay.config, "w") as f:
        json.dump({"unpack": {"max_bytes": 8 << 20}}, f)
    m = img.manifests["linux/amd64"]
    with pytest.raises(UnsafeImage) as err:
        unpack.unpack_image(lay, m)
    msg = err.value.message
    assert m in msg and ik.digest(bomb) in msg and "layer 2/2" in msg, msg
    assert os.listdir(lay.images) == []


def test_budget_config_is_checked(tmp_path):
    p = tmp_path / "agent.json"
    p.write_text(json.dumps({"unpack": {"max_bytes": "lots"}}))
    with pytest.raises(Exception, match=r"agent.json.*unpack/max_bytes"):
        unpack.load_budget(str(p))
    p.write_text(json.dumps({"unpack": {"max_byte": 1}}))
    with pytest.raises(Exception, match=r"unpack/max_byte.*unknown"):
        unpack.load_budget(str(p))
    p.write_text(json.dumps({"unpack": {"max_files": 7, "reserve_percent": 1.5}}))
    b = unpack.load_budget(str(p))
    assert (b.max_files, b.reserve_percent) == (7, 1.5)
    assert unpack.load_budget(str(tmp_path / "absent.json")) == unpack.Budget()


# --- host-side state: root only -------------------------------------------------------------

@pytest.fixture
def open_dir():
    """A directory every user can traverse (pytest's own tmp dirs are 0700)."""
    import shutil
    import tempfile
    d = tempfile.mkdtemp(prefix="orch-unpack-test-", dir="/tmp")
    os.chmod(d, 0o755)
    yield Path(d)
    shutil.rmtree(d)


def test_state_and_images_are_root_only_and_setuid_files_unreachable(open_dir):
    tmp_path = open_dir
    suid = ik.tar_bytes([ik.dir_entry("bin"),
                         ik.file_entry("bin/suid", open("/bin/id", "rb").read(), 0o4755)])
    img = ik.make_image({"linux/amd64": [suid]})
    lay = _host(tmp_path, img.blobs)
    d = unpack.unpack_image(lay, img.manifests["linux/amd64"])
    [top] = unpack.lowerdirs(lay, img.manifests["linux/amd64"])
    for path in (lay.root, lay.images, lay.containers, lay.blobs, lay.volumes, lay.logs,
                 lay.state, lay.run, d, layers.root_of(lay), os.path.dirname(top)):
        assert unpack.mode_of(path) == 0o700, path
    exe = os.path.join(top, "bin", "suid")
    assert unpack.mode_of(exe) == 0o4755                  # the image keeps what it holds
    # through a shell: setpriv itself looks the program up while it still holds root's caps
    p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        "/bin/sh", "-c", 'exec "$0" -u', exe], capture_output=True, text=True)
    assert p.returncode != 0 and "Permission denied" in p.stderr, (p.stdout, p.stderr)
