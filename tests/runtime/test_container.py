"""Container bookkeeping that needs no runtime: ids, log bounding, mount detection."""
import os

from runtime import container, meta


def test_container_id_is_per_host_and_slot():
    assert meta.container_id("1a2b3c4d", "web", "a") == "o1a2b3c4d-web-a"


def test_bound_log_keeps_one_previous_file(tmp_path):
    log = tmp_path / "web.a.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)   # like the container's stdout
    os.write(fd, b"x" * 2000)
    container.bound_log(str(log), limit=1000)
    assert (tmp_path / "web.a.log.1").read_bytes() == b"x" * 2000
    assert log.stat().st_size == 0
    os.write(fd, b"after\n")                                     # O_APPEND: lands at 0
    os.close(fd)
    assert log.read_bytes() == b"after\n"
    container.bound_log(str(log), limit=1000)                    # under the limit: untouched
    assert log.read_bytes() == b"after\n"


def test_mounted():
    assert container.mounted("/proc")
    assert not container.mounted("/proc/self/fd")


def test_meta_roundtrip(tmp_path):
    m = meta.Meta(id="o1-web-a", service="web", slot="a", release="r-1", instance="i",
                       runtime="runc", ip="10.88.0.2", pid=42, starttime="7", started=True)
    m.save(str(tmp_path / "meta.json"))
    assert meta.Meta.load(str(tmp_path / "meta.json")) == m
    assert meta.Meta.load(str(tmp_path / "missing.json")) is None


def test_orphans_are_runtime_states_of_ours_without_a_container_dir(tmp_path):
    from runtime.layout import Layout
    lay = Layout(str(tmp_path / "root"), str(tmp_path / "run"))
    for cid in ("o1a2b3c4d-web-a", "o1a2b3c4d-my-api-b", "offffffff-web-a"):
        os.makedirs(tmp_path / "run" / "runc" / cid)
    kept = meta.Meta(id="o1a2b3c4d-web-a", service="web", slot="a", release="r",
                          instance="i", runtime="runc")
    orphans = meta.list_orphans(lay, "1a2b3c4d", [kept])
    assert [(o.id, o.service, o.slot, o.runtime) for o in orphans] == [
        ("o1a2b3c4d-my-api-b", "my-api", "b", "runc")]


def test_stop_signal_from_the_image():
    from runtime.oci import stop_signal
    assert [stop_signal(x) for x in ("SIGQUIT", "quit", "3", "", None, "SIGNOPE", "99")] == [
        "QUIT", "QUIT", "QUIT", "TERM", "TERM", "TERM", "TERM"]


def test_a_failed_slots_log_tail_is_its_own(tmp_path):
    from runtime.layout import Layout
    lay = Layout(str(tmp_path / "root"), str(tmp_path / "run"))
    os.makedirs(lay.logs)
    with open(meta.log_path(lay, "web", "a"), "w") as f:
        f.write("".join(f"old {i}\n" for i in range(30)))
    with open(meta.log_path(lay, "web", "b"), "w") as f:
        f.write("new: cannot bind\n")
    assert meta.log_tail(lay, "web", "b") == "; last lines of its log:\n  | new: cannot bind"
    tail = meta.log_tail(lay, "web", "a")
    assert tail.count("\n") == meta.LOG_TAIL and tail.endswith("  | old 29")
    assert meta.log_tail(lay, "web", "missing") == ""
