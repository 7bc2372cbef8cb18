"""receive framing round trips (hypothesis): any set of blobs, any resume offsets, any chunking
of the stream on the wire -> the receiver stores exactly those blobs, verified."""
import hashlib
import io
import os

from hypothesis import given, settings, strategies as st

from runtime import protocol, store
from runtime.layout import Layout


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Chunked(io.RawIOBase):
    """The stream as the receiver reads it off a pipe: in arbitrary pieces."""

    def __init__(self, data: bytes, cuts):
        self.data, self.pos, self.cuts = data, 0, list(cuts) or [1 << 20]

    def readable(self):
        return True

    def readinto(self, b):
        n = min(len(b), self.cuts[self.pos % len(self.cuts)], len(self.data) - self.pos)
        b[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


@given(blobs=st.lists(st.binary(max_size=3000), min_size=1, max_size=4, unique=True),
       data=st.data(), cuts=st.lists(st.integers(1, 700), max_size=5))
@settings(max_examples=60, deadline=None)
def test_frames_round_trip_through_the_receiver(tmp_path_factory, blobs, data, cuts):
    layout = Layout(str(tmp_path_factory.mktemp("root")), str(tmp_path_factory.mktemp("run")))
    layout.ensure()
    by_digest = {digest(b): b for b in blobs}
    for d, b in by_digest.items():                 # some blobs were half-sent before
        offset = data.draw(st.integers(0, len(b)))
        if 0 < offset < len(b):
            with open(os.path.join(layout.incoming, d.split(":")[1] + ".part"), "wb") as f:
                f.write(b[:offset])
    partial = store.have(layout, list(by_digest))["partial"]
    wire = b"".join(protocol.iter_frames({d: len(b) for d, b in by_digest.items()}, partial,
                                         lambda d: io.BytesIO(by_digest[d])))
    body = store.receive(layout, io.BufferedReader(Chunked(wire, cuts)))
    assert sorted(body["stored"]) == sorted(by_digest)
    for d, b in by_digest.items():
        with open(layout.blob(d.split(":")[1]), "rb") as f:
            assert f.read() == b


@given(d=st.binary(min_size=1).map(digest), size=st.integers(0, 1 << 40), data=st.data())
def test_a_frame_header_parses_back(d, size, data):
    offset = data.draw(st.integers(0, size))
    assert protocol.parse_frame_header(protocol.frame_header(d, size, offset).rstrip(b"\n")) == (d, size, offset)
