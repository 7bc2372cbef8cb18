"""Blob store: verified before kept, resumable, corrupted and truncated blobs refused."""
import io
import os

import pytest

from runtime import protocol, store
from runtime.errors import DigestMismatch
from runtime.layout import Layout


@pytest.fixture
def layout(tmp_path):
    lay = Layout(str(tmp_path / "root"), str(tmp_path / "run"))
    lay.ensure()
    return lay


def frame(digest, data, size=None, offset=0):
    return protocol.frame_header(digest, len(data) + offset if size is None else size,
                                 offset) + data


def test_receive_and_have(layout):
    data = b"x" * 1000
    d = protocol.sha256_digest(data)
    out = store.receive(layout, io.BytesIO(frame(d, data)))
    assert out == {"stored": [d], "partial": {}}
    assert store.have(layout, [d]) == {"present": [d], "partial": {}}
    assert store.read_verified(layout, d) == data


def test_truncated_stream_is_partial_then_resumes(layout):
    data = os.urandom(5000)
    d = protocol.sha256_digest(data)
    cut = frame(d, data)[:-3000]
    out = store.receive(layout, io.BytesIO(cut))
    assert out["stored"] == [] and out["partial"] == {d: 2000}
    assert store.have(layout, [d]) == {"present": [], "partial": {d: 2000}}
    assert not os.path.exists(layout.blob(protocol.split_digest(d)))
    out = store.receive(layout, io.BytesIO(protocol.frame_header(d, 5000, 2000) + data[2000:]))
    assert out["stored"] == [d]
    assert store.read_verified(layout, d) == data


def test_corrupted_blob_is_refused_and_never_kept(layout):
    good = b"good data"
    d = protocol.sha256_digest(good)
    other = b"ok"
    d2 = protocol.sha256_digest(other)
    with pytest.raises(DigestMismatch) as exc:
        store.receive(layout, io.BytesIO(frame(d, b"evil data") + frame(d2, other)))
    assert exc.value.extra["refused"] == [d]
    assert exc.value.extra["stored"] == [d2]
    assert store.have(layout, [d]) == {"present": [], "partial": {}}


def test_corruption_on_disk_is_detected_at_use(layout):
    data = b"manifest"
    d = protocol.sha256_digest(data)
    store.receive(layout, io.BytesIO(frame(d, data)))
    with open(layout.blob(protocol.split_digest(d)), "wb") as f:
        f.write(b"tampered")
    with pytest.raises(DigestMismatch):
        store.read_verified(layout, d)


def test_a_held_converge_lock_makes_a_waiter_busy_not_unlocked(layout):
    from runtime.errors import Busy
    from runtime.state import State
    a, b = State(layout), State(layout)
    with a.flock("converge.lock") as got:
        assert got
        with b.flock("converge.lock", blocking=False) as got2:
            assert not got2
        with pytest.raises(Busy):
            with b.flock("converge.lock", timeout=0.05):
                pass
    with b.flock("converge.lock", timeout=0.05) as got3:
        assert got3


@pytest.mark.parametrize("damage", ["flip", "truncate", "same_size_same_mtime"])
def test_a_damaged_blob_is_not_present_and_is_dropped_so_it_travels_again(layout, damage):
    data = os.urandom(4096)
    d = protocol.sha256_digest(data)
    store.receive(layout, io.BytesIO(frame(d, data)))
    path = layout.blob(protocol.split_digest(d))
    st = os.stat(path)
    os.chmod(path, 0o644)
    if damage == "truncate":
        with open(path, "r+b") as f:
            f.truncate(100)
    else:
        with open(path, "r+b") as f:
            f.seek(10)
            f.write(bytes([data[10] ^ 0xFF]))
        if damage == "same_size_same_mtime":       # size and times kept: only a re-hash can tell
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
            store.forget_verified(layout, d)         # the doubt: its mark is gone
    assert store.have(layout, [d]) == {"present": [], "partial": {}}
    assert not os.path.exists(path)                  # dropped: the next receive stores it again
    assert store.receive(layout, io.BytesIO(frame(d, data)))["stored"] == [d]
    assert store.have(layout, [d])["present"] == [d]


def test_a_blob_without_its_mark_is_rehashed_once_and_kept(layout):
    data = os.urandom(4096)
    d = protocol.sha256_digest(data)
    store.receive(layout, io.BytesIO(frame(d, data)))
    store.forget_verified(layout, d)                 # e.g. stored by an older agent
    assert store.have(layout, [d])["present"] == [d]
    assert store.is_marked(layout, d)


def test_two_processes_marking_one_blob_at_once_both_succeed(layout):
    """serve's snapshot re-hashes and marks a blob a session has just received and is marking
    (a pi-fleet apply failed with the loser's rename finding no temporary file)."""
    import threading
    data = b"payload"
    d = protocol.sha256_digest(data)
    store.receive(layout, io.BytesIO(frame(d, data)))
    h = d.split(":", 1)[1]
    errors = []

    def mark():
        try:
            for _ in range(300):
                store.mark_verified(layout, h)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)
    threads = [threading.Thread(target=mark) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and store.is_marked(layout, d)
    assert [n for n in os.listdir(os.path.dirname(store._mark_path(layout, h))) if ".tmp" in n] == []
