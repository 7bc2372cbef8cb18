"""Agent verbs through the real CLI (exit codes, JSON errors) where no container runs."""
import os
import subprocess
import sys
import time

import pytest

from runtime import protocol
from runtime.layout import write_json
from tests.runtime import imagekit as ik


@pytest.fixture
def agent(tmp_path):
    return ik.Agent(ik.local_runner(), [sys.executable, "-m", "runtime"],
                    str(tmp_path / "root"), str(tmp_path / "run"))


def test_info(agent):
    rc, info = agent.call("info")
    assert rc == 0
    assert set(info) >= {"platform", "agent_digest", "runtime", "runtime_version", "python",
                         "free_disk", "free_memory", "nft"}


@pytest.mark.parametrize("services,code,words", [
    ({"Bad_Name": {"index": "sha256:" + "1" * 64, "deploy": {}}}, protocol.E_BAD_REQUEST,
     "service name"),
    ({"web": {"index": "sha256:" + "1" * 64, "deploy": {}, "release": "r-0"}},
     protocol.E_BAD_REQUEST, "does not match"),
    ({"web": {"index": "sha256:" + "1" * 64, "manifest": "sha256:" + "2" * 64, "deploy": {}}},
     protocol.E_MISSING_BLOB, "not on this host"),
    ({"web": {"deploy": {}}}, protocol.E_BAD_REQUEST, "needs index and deploy"),
])
def test_apply_refuses_bad_requests_before_changing_anything(agent, tmp_path, services, code,
                                                             words):
    rc, body = agent.call("apply", req={"who": "t", "services": services})
    assert rc != 0 and body["error"]["code"] == code and words in body["error"]["message"]
    assert not (tmp_path / "root" / "state" / "target.json").exists()


def test_bad_json_and_unknown_verb(agent):
    rc, body = agent.call("apply", data=b"{nope")
    assert rc == protocol.EXIT_USAGE and body["error"]["code"] == protocol.E_BAD_REQUEST
    rc, body = agent.call("frobnicate")
    assert rc == protocol.EXIT_USAGE and body["error"]["code"] == protocol.E_UNKNOWN_VERB
    assert "frobnicate" in body["error"]["message"]
    rc, body = agent.call("rollback")                          # its argument is missing
    assert rc == protocol.EXIT_USAGE and body["error"]["code"] == protocol.E_USAGE


def test_every_verb_dispatches_through_one_table(tmp_path):
    """One shape for a verb: (layout, request, io) -> (exit code, JSON); an unknown verb gets a
    stable code without a process of its own (a session dispatches the same way)."""
    import io as _io

    from runtime.cli import VERBS, Io, dispatch
    from runtime.layout import Layout
    layout = Layout(str(tmp_path / "root"), str(tmp_path / "run"))
    sink = _io.StringIO()
    code, body = dispatch("nope", layout, {}, Io(_io.StringIO(), sink, print))
    assert code == protocol.EXIT_USAGE and body["error"]["code"] == protocol.E_UNKNOWN_VERB
    assert body["error"]["protocol"] == protocol.PROTOCOL_VERSION
    code, body = dispatch("audit", layout, {}, Io(_io.StringIO(), sink, print))
    assert (code, body) == (protocol.EXIT_OK, {"lines": []})
    assert all(v.name in protocol.__doc__ for v in VERBS.values())   # the contract lists every verb
    assert {v.name for v in VERBS.values() if v.reads_only} == {
        "info", "have", "observe", "status", "audit", "logs", "volumes"}


def test_lock_unlock_audit(agent):
    assert agent.call("lock", req={"holder": "ci", "ttl": 30})[0] == 0
    assert agent.call("lock", req={"holder": "ci", "ttl": 30})[0] == 0      # re-entrant
    rc, body = agent.call("lock", req={"holder": "me", "ttl": 30})
    assert rc == protocol.EXIT_LOCKED and body["error"]["holder"] == "ci"
    rc, body = agent.call("unlock", req={"holder": "me"})
    assert rc == protocol.EXIT_LOCKED
    assert agent.call("unlock", req={"holder": "me", "force": True})[0] == 0
    assert agent.call("lock", req={"holder": "me", "ttl": 0.01})[0] == 0
    time.sleep(0.05)
    assert agent.call("lock", req={"holder": "ci", "ttl": 30})[0] == 0      # expired
    assert agent.call("audit")[1] == {"lines": []}


def test_lock_can_answer_what_observe_would_once_it_is_held(agent):
    digest = "sha256:" + "ab" * 32
    rc, body = agent.call("lock", req={"holder": "ci", "token": "t1", "ttl": 30,
                                       "observe": {"digests": [digest]}})
    assert rc == 0 and body["lock"]["holder"] == "ci"
    rc2, seen = agent.call("observe", req={"digests": [digest]})
    assert body["observe"]["have"] == seen["have"] and body["observe"]["status"] == seen["status"]
    assert body["observe"]["info"]["platform"] == seen["info"]["platform"]
    rc, body = agent.call("lock", req={"holder": "bob", "token": "t2", "ttl": 30,
                                       "observe": {"digests": [digest]}})
    assert rc == protocol.EXIT_LOCKED and "observe" not in body          # not held: nothing read
    assert "observe" not in agent.call("lock", req={"holder": "ci", "token": "t1", "ttl": 30})[1]
    rc, body = agent.call("lock", req={"holder": "ci", "token": "t1", "ttl": 30,
                                       "observe": {"digests": ["not-a-digest"]}})
    assert rc == 0 and "observe" not in body and "digest" in body["observe_error"]   # still held
    assert agent.call("lock", req={"holder": "bob", "token": "t2", "ttl": 30})[0] == protocol.EXIT_LOCKED
    rc, body = agent.call("unlock", req={"token": "t1", "status": True})
    assert rc == 0 and body["released"]["holder"] == "ci"
    assert body["status"] == agent.call("status")[1]           # what the host runs as it goes
    assert "status" not in agent.call("unlock", req={"token": "t1"})[1]


def test_logs_tail_and_follow(agent, tmp_path):
    root = tmp_path / "root"
    (root / "state").mkdir(parents=True)
    (root / "logs").mkdir()
    write_json(str(root / "state" / "status.json"),
               {"current": {"web": {"release": "r-1", "slot": "b", "since": 1.0}}})
    log = root / "logs" / "web.b.log"
    log.write_bytes(b"one\ntwo\nthree\n")
    rc, out, err = agent.runner(agent.argv("logs", "web", "--tail", "2"), b"", 30)
    assert rc == 0 and out == b"two\nthree\n"
    p = subprocess.Popen(agent.argv("logs", "web", "--tail", "1", "--follow"),
                         stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=ik.REPO),
                         cwd=ik.REPO)
    try:
        assert p.stdout.readline() == b"three\n"
        with open(log, "ab") as f:
            f.write(b"four\n")
        assert p.stdout.readline() == b"four\n"
        (root / "logs" / "web.a.log").write_bytes(b"green starts\n")     # a blue/green switch
        with open(log, "ab") as f:
            f.write(b"five (blue, draining)\n")
        write_json(str(root / "state" / "status.json"),
                   {"current": {"web": {"release": "r-2", "slot": "a", "since": 2.0}}})
        assert p.stdout.readline() == b"five (blue, draining)\n"
        assert b"now serves from slot a (release r-2)" in p.stdout.readline()
        assert p.stdout.readline() == b"green starts\n"
        with open(root / "logs" / "web.a.log", "ab") as f:
            f.write(b"six\n")
        assert p.stdout.readline() == b"six\n"
    finally:
        p.kill()
        p.wait()
    rc, body = agent.call("logs", "nope")
    assert rc != 0 and body["error"]["code"] == protocol.E_NOT_FOUND


def test_serve_hands_over_to_a_successor_and_keeps_a_pidfile(agent, tmp_path):
    env = dict(os.environ, PYTHONPATH=ik.REPO)
    pidfile = tmp_path / "run" / "serve.pid"

    def start():
        return subprocess.Popen(agent.argv("serve"), env=env, cwd=ik.REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def named(pid):
        end = time.monotonic() + 10
        while time.monotonic() < end:
            if pidfile.exists() and pidfile.read_text().strip() == str(pid):
                return True
            time.sleep(0.02)
        return False

    first = start()
    second = None
    try:
        assert named(first.pid)
        assert agent.call("info")[1]["serve_pid"] == first.pid
        first.terminate()                       # what an agent upgrade does, then starts anew
        second = start()
        assert named(second.pid)
        assert first.wait(10) == 0
        assert second.poll() is None
    finally:
        for p in (first, second):
            if p and p.poll() is None:
                p.terminate()
                p.wait(10)


def test_releases_to_keep():
    from runtime.gc import releases_to_keep
    st = {"current": {"web": {"release": "r3"}}, "history": {"web": ["r1", "r2"]}}
    keep = releases_to_keep({"web": {"release": "r4"}}, st, [("api", "x1")])
    assert keep == {("web", "r1"), ("web", "r2"), ("web", "r3"), ("web", "r4"), ("api", "x1")}


@pytest.mark.parametrize("history,keep,expected", [
    (["r1", "r2", "r3", "r4"], 3, ["r3", "r4"]),      # serving + 2 before it
    (["r1"], 3, ["r1"]),
    (["r1", "r2"], 1, []),                            # only the serving release
    ([], 2, []),
])
def test_trim_history_counts_the_serving_release(history, keep, expected):
    from runtime.gc import trim_history
    assert trim_history({"web": history}, {"web": keep}) == {"web": expected}


def test_a_mutating_verb_runs_only_for_the_lock_holder(agent):
    rc, body = agent.call("rollback", "web", lock=False)                 # nobody holds it
    assert rc == protocol.EXIT_LOCKED and "not held" in body["error"]["message"]
    assert agent.call("lock", req={"holder": "alice@ci pid 7", "token": "t-alice", "ttl": 30})[0] == 0
    for verb, args, req in (("rollback", ("web",), None), ("remove", ("web",), {"lock": "t-bob"}),
                            ("gc", (), {"lock": "alice@ci pid 7"})):    # no token, another, the name
        rc, body = agent.call(verb, *args, req=req, lock=False)
        assert rc == protocol.EXIT_LOCKED and body["error"]["holder"] == "alice@ci pid 7", body
        assert "alice@ci pid 7" in body["error"]["message"]
    rc, body = agent.call("rollback", "web", req={"lock": "t-alice"}, lock=False)
    assert body["error"]["code"] == protocol.E_NOT_FOUND, body           # past the lock
    rc, body = agent.call("lock", req={"holder": "bob", "token": "t-bob", "ttl": 30})
    assert rc == protocol.EXIT_LOCKED and "t-alice" not in str(body)      # the token never shows
    assert agent.call("lock", req={"holder": "bob", "token": "t-bob", "ttl": 30, "force": True})[0] == 0
    rc, body = agent.call("rollback", "web", req={"lock": "t-alice"}, lock=False)
    assert rc == protocol.EXIT_LOCKED and body["error"]["holder"] == "bob"  # fenced off


def test_apply_without_the_lock_changes_nothing(agent, tmp_path):
    img = ik.make_image({"linux/amd64": [ik.tar_bytes([ik.file_entry("f", b"x")])]})
    agent.ship(img)
    spec = ik.deploy_spec(port=8080)
    services = {"web": {"index": img.index, "deploy": spec}}
    rc, body = agent.call("apply", req={"who": "t", "services": services}, lock=False)
    assert rc == protocol.EXIT_LOCKED and body["error"]["code"] == protocol.E_LOCKED, body
    assert not (tmp_path / "root" / "state" / "target.json").exists()


def test_read_verbs_on_a_fresh_host_leave_no_trace(agent, tmp_path):
    """Reads are reads: on a host where orch never ran, info/observe/have/status/audit answer
    without making the state directory, a host id or anything else."""
    for verb, req in (("info", None), ("observe", {"digests": ["sha256:" + "3" * 64]}),
                      ("have", {"digests": []}), ("status", None), ("audit", None)):
        rc, body = agent.call(verb, req=req)
        assert rc == 0, (verb, body)
    assert sorted(os.listdir(tmp_path)) == []
