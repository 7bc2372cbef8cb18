"""State writes on a full disk: a real tmpfs of a few KiB, filled up."""
import errno
import os
import subprocess

import pytest

from runtime.layout import write_json
from runtime.state import State
from runtime.layout import Layout


@pytest.fixture
def full_disk_lab(tmp_path):
    """A 16 KiB tmpfs (root only): writes past it fail with ENOSPC."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_failed_write_leaves_no_temporary_file_and_never_a_torn_one(full_disk_lab):
    with pytest.raises(OSError) as err:
        write_json(str(full_disk_lab / "target.json"), {"x": "y" * 100_000}, durable=True)
    assert err.value.errno == errno.ENOSPC
    assert os.listdir(full_disk_lab) == []


def test_the_deploy_lock_on_a_full_disk_leaves_nothing_behind(full_disk_lab):
    layout = Layout(str(full_disk_lab / "root"), str(full_disk_lab / "run"))
    os.makedirs(layout.state)
    fd = os.open(full_disk_lab / "filler", os.O_WRONLY | os.O_CREAT)   # fill what is left
    try:
        while os.write(fd, b"\0" * 1024):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        State(layout).lock("alice@ci pid 1", 60, "t")
    assert [n for n in os.listdir(layout.state) if ".tmp" in n] == []
