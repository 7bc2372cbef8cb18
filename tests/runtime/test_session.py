"""One agent process answering a sequence of framed requests (the `session` verb)."""
import json
import os
import subprocess
import sys

from runtime import protocol
from runtime.session import encode_request, read_answer
from tests.runtime import imagekit as ik


def start(tmp_path):
    return subprocess.Popen([sys.executable, "-m", "runtime", "--root", str(tmp_path / "root"),
                             "--run", str(tmp_path / "run"), "session"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=ik.REPO), cwd=ik.REPO)


def ask(p, verb, request=None, data=b""):
    p.stdin.write(encode_request(verb, request, len(data)) + data)
    p.stdin.flush()
    return read_answer(p.stdout)


def test_one_process_answers_lock_receive_have_status_unlock(tmp_path):
    blob = b"layer bytes" * 1000
    d = ik.digest(blob)
    stream = ik.receive_stream({d: blob})
    p = start(tmp_path)
    try:
        assert ask(p, "lock", {"holder": "me", "ttl": 30})[0] == 0
        code, body = ask(p, "lock", {"holder": "other", "ttl": 30})
        assert code == protocol.EXIT_LOCKED and body["error"]["holder"] == "me"
        code, body = ask(p, "receive", data=stream)
        assert code == 0 and body["stored"] == [d]
        assert ask(p, "have", {"digests": [d]})[1]["present"] == [d]
        assert "services" in ask(p, "status")[1]
        assert ask(p, "unlock", {"holder": "me"})[0] == 0
        assert ask(p, "info")[1]["platform"]
    finally:
        p.stdin.close()
        assert p.wait(10) == 0


def test_a_bad_stream_is_refused_and_the_session_stays_in_step(tmp_path):
    bad = b'{"digest": "sha256:' + b"0" * 64 + b'", "size": 5, "offset": 0}\nhello'
    p = start(tmp_path)
    try:
        code, body = ask(p, "receive", data=bad)
        assert code != 0 and body["error"]["code"] == protocol.E_DIGEST   # not kept
        code, body = ask(p, "frobnicate")
        assert code != 0 and body["error"]["code"] in ("usage", "unknown_verb")
        code, body = ask(p, "logs", {"service": "x"})             # writes raw text: not here
        assert code == protocol.EXIT_USAGE
        assert ask(p, "have", {"digests": []})[0] == 0             # still answering in step
    finally:
        p.stdin.close()
        p.wait(10)


def test_garbage_header_ends_the_session_with_an_error(tmp_path):
    p = start(tmp_path)
    out, _ = p.communicate(b"not json\n", timeout=10)
    assert p.returncode == protocol.EXIT_USAGE
    assert json.loads(out.splitlines()[-1])["body"]["error"]["code"] == protocol.E_BAD_REQUEST


def test_a_session_that_changed_the_host_leaves_the_observe_snapshot_when_it_ends(tmp_path):
    """The next command's first look reads it at once (serve would write it within a second)."""
    snap = tmp_path / "run" / "observe.json"
    p = start(tmp_path)
    try:
        assert ask(p, "status")[0] == 0
    finally:
        p.stdin.close()
        assert p.wait(10) == 0
    assert not snap.exists()                       # a read leaves nothing behind
    p = start(tmp_path)
    try:
        assert ask(p, "lock", {"holder": "me", "ttl": 30})[0] == 0
        assert ask(p, "gc", {"lock": "me"})[0] == 0
        assert ask(p, "unlock", {"holder": "me"})[0] == 0
    finally:
        p.stdin.close()
        assert p.wait(10) == 0
    seen = json.loads(snap.read_text())["observe"]
    assert seen["status"]["services"] == {} and "platform" in seen["info"]
