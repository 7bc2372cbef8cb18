"""serve's observe snapshot, reader side: fresh, torn, old, from the future."""
import json

import pytest

from runtime import snapshot

BODY = {"info": {"agent_digest": "sha256:x"}, "have": {"present": []}, "status": {"services": {}}}


@pytest.mark.parametrize("out,ok", [
    (snapshot.render(BODY, 100.0) + b"101.5 3.2\n", True),
    (snapshot.render(BODY, 100.0) + b"103.5 3.2\n", False),            # older than MAX_AGE
    (snapshot.render(BODY, 100.0) + b"99.0 3.2\n", False),             # written "later": a reboot
    (snapshot.render(BODY, 100.0)[:30] + b"\n101.0 3.2\n", False),     # torn
    (b"101.0 3.2\n", False),                                           # no snapshot (cat failed on it)
    (json.dumps({"uptime": 100.0}).encode() + b"\n100.5 1\n", False),  # no body
])
def test_parse_read(out, ok):
    assert (snapshot.parse_read(out) == BODY) is ok


def test_write_and_forget(tmp_path):
    snapshot.write(str(tmp_path), BODY)
    text = (tmp_path / snapshot.NAME).read_bytes()
    now = open("/proc/uptime").read().encode()
    assert snapshot.parse_read(text + now) == BODY
    snapshot.forget(str(tmp_path))
    snapshot.forget(str(tmp_path))
    assert not (tmp_path / snapshot.NAME).exists()
