"""State files are written atomically (tmp, then rename); a write of the bytes a file already
holds (with its mode) makes no new file: the agent rewrites secrets, records and status with
what they hold several times a change, and each new file costs an inode (a Pi's SD card, or
ext4 without a journal scanning past recently freed ones)."""
import json
import os

from runtime.layout import write_json


def test_the_same_content_keeps_the_file_and_a_change_replaces_it(tmp_path):
    p = str(tmp_path / "status.json")
    write_json(p, {"a": 1, "b": [1, 2]})
    first = os.stat(p)
    write_json(p, {"b": [1, 2], "a": 1})                   # same bytes (sorted keys)
    assert os.stat(p).st_ino == first.st_ino
    write_json(p, {"b": [1, 2], "a": 1}, durable=True)     # durable: synced, still that file
    assert os.stat(p).st_ino == first.st_ino
    write_json(p, {"a": 2, "b": [1, 2]})
    assert os.stat(p).st_ino != first.st_ino
    assert json.loads(open(p).read()) == {"a": 2, "b": [1, 2]}
    assert os.listdir(tmp_path) == ["status.json"]


def test_the_same_content_with_another_mode_is_written_again(tmp_path):
    p = str(tmp_path / "target.json")
    write_json(p, {"a": 1})
    assert os.stat(p).st_mode & 0o777 == 0o644
    write_json(p, {"a": 1}, 0o600)
    assert os.stat(p).st_mode & 0o777 == 0o600


def test_a_symlink_is_never_written_through(tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text('{"a":1}\n')
    p = tmp_path / "status.json"
    p.symlink_to(outside)
    write_json(str(p), {"a": 1})
    assert not p.is_symlink() and outside.read_text() == '{"a":1}\n'


def test_a_fifo_in_the_way_is_replaced_not_waited_on(tmp_path):
    import subprocess
    import sys
    p = tmp_path / "status.json"
    os.mkfifo(p)
    code = f"from runtime.layout import write_json\nwrite_json({str(p)!r}, {{'a': 1}})\n"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=20,
                   cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert p.read_text() == '{"a":1}\n'
