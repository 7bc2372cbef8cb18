"""The shared protocol: names, framing, answers."""
import io
import json

import pytest

from runtime import protocol


def test_release_id_is_stable_and_key_order_free():
    a = protocol.release_id("sha256:" + "a" * 64, {"x": 1, "y": [1, 2]})
    b = protocol.release_id("sha256:" + "a" * 64, {"y": [1, 2], "x": 1})
    assert a == b and a.startswith("r-") and len(a) == 18
    assert a != protocol.release_id("sha256:" + "b" * 64, {"x": 1, "y": [1, 2]})
    assert a != protocol.release_id("sha256:" + "a" * 64, {"x": 2, "y": [1, 2]})


@pytest.mark.parametrize("bad", ["sha256:abc", "md5:" + "a" * 64, "sha256:" + "A" * 64,
                                 "sha256:../" + "a" * 61, "", "sha256:" + "a" * 31 + "/" + "a" * 32,
                                 "sha256:" + "a" * 63 + "\n", "sha256: " + "a" * 63])
def test_split_digest_is_strict(bad):
    with pytest.raises(ValueError):
        protocol.split_digest(bad)
    assert protocol.split_digest("sha256:" + "0123456789abcdef" * 4) == "0123456789abcdef" * 4


def test_frames_roundtrip_with_offset():
    data = {"sha256:" + "1" * 64: b"hello world"}
    stream = b"".join(protocol.iter_frames({d: len(v) for d, v in data.items()},
                                           {"sha256:" + "1" * 64: 6},
                                           lambda d: io.BytesIO(data[d])))
    head, rest = stream.split(b"\n", 1)
    assert protocol.parse_frame_header(head) == ("sha256:" + "1" * 64, 11, 6)
    assert rest == b"world"


@pytest.mark.parametrize("line", [b"{}", b"not json", b'{"digest": "sha256:x", "size": 1}',
                                  b'{"digest": "sha256:' + b"a" * 64
                                  + b'", "size": 1, "offset": 2}'])
def test_bad_frame_headers(line):
    with pytest.raises(ValueError):
        protocol.parse_frame_header(line)


def test_parse_answer():
    assert protocol.parse_answer(0, b'{"a": 1}') == (True, {"a": 1})
    ok, body = protocol.parse_answer(1, json.dumps(protocol.error_body("locked", "x")).encode())
    assert not ok and body["error"]["code"] == "locked"
    ok, body = protocol.parse_answer(1, b"Traceback...")
    assert not ok and body["error"]["code"] == protocol.E_INTERNAL
