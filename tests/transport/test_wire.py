"""Layers as xz recipes (orchestrator/transport/wire.py -> runtime/wire.py): the host rebuilds
each layer's tar from new bytes plus references to files it holds, verifies the diff_id and
keeps the layer unpacked; every lie is refused, named, with nothing half-written."""
import io
import json
import lzma
import os
import struct

import pytest

from orchestrator.image.store import Store
from orchestrator.transport import wire
from orchestrator.transport.shipper import RateLimit
from runtime import layers, store, unpack
from runtime.errors import DigestMismatch
from runtime.layout import Layout
from runtime import wire as host_wire
from tests.runtime import imagekit as ik

BIG_A = os.urandom(40000)
BIG_B = os.urandom(30000)


def base(b_content=BIG_B):
    return ik.tar_bytes([ik.dir_entry("usr"), ik.file_entry("usr/a.so", BIG_A),
                         ik.file_entry("usr/b.so", b_content), ik.file_entry("usr/small", b"s"),
                         ik.dir_entry("etc"), ik.file_entry("etc/conf", b"c" * 300)])


@pytest.fixture
def both(tmp_path):
    lay = Layout(str(tmp_path / "host"), str(tmp_path / "run"), str(tmp_path / "etc"))
    lay.ensure()
    return Store(str(tmp_path / "orch")).ensure(), lay


def put_image(st, img):
    for d, data in img.blobs.items():
        st.put_bytes(data, expected=d)
    m = img.manifests["linux/amd64"]
    return m, {b: c[0] for b, c in wire.layer_infos(st, {m: "linux/amd64"}).items()}


def send(lay, frames) -> dict:
    return store.receive(lay, io.BytesIO(b"".join(frames)))


def held(lay):
    return store.have(lay, [], with_layers=True)["layers"]


def test_a_layer_travels_as_a_recipe_and_is_stored_unpacked_without_its_blob(both):
    st, lay = both
    layer = base()
    m, infos = put_image(st, ik.make_image({"linux/amd64": [layer]}))
    frames = list(wire.iter_layer_frame(st, infos[ik.digest(layer)], set()))
    answer = send(lay, frames)
    assert answer["stored"] == [ik.digest(layer)]
    assert not os.path.exists(lay.blob(ik.digest(layer)[7:]))         # no gzip blob kept
    assert store.have(lay, [ik.digest(layer)])["present"] == [ik.digest(layer)]
    fs = layers.fs_of(lay, ik.diff_id(layer))
    assert open(os.path.join(fs, "usr", "a.so"), "rb").read() == BIG_A


def test_a_changed_file_inside_a_big_layer_ships_about_its_own_bytes(both):
    st, lay = both
    old, new = base(), base(os.urandom(30000))                        # b.so upgraded
    _, infos = put_image(st, ik.make_image({"linux/amd64": [old]}))
    send(lay, wire.iter_layer_frame(st, infos[ik.digest(old)], set()))
    _, infos2 = put_image(st, ik.make_image({"linux/amd64": [new]}))
    known = wire.known_contents(st, held(lay))
    frames = list(wire.iter_layer_frame(st, infos2[ik.digest(new)], known))
    size = sum(map(len, frames))
    assert 30000 < size < 30000 + 3000, size          # the new b.so (random) + headers, not a.so
    answer = send(lay, frames)
    assert answer["stored"] == [ik.digest(new)]
    fs = layers.fs_of(lay, ik.diff_id(new))
    assert open(os.path.join(fs, "usr", "a.so"), "rb").read() == BIG_A   # rebuilt from a ref


def recipe_frame(diff_id, blob, ops: bytes, lowers=()) -> bytes:
    head = json.dumps({"layer": diff_id, "blob": blob, "encoding": host_wire.ENCODING,
                       "lowers": [list(x) for x in lowers]}).encode() + b"\n"
    data = lzma.compress(ops, format=lzma.FORMAT_XZ)
    return head + b"%d\n" % len(data) + data + b"0\n"


def raw(b: bytes) -> bytes:
    return host_wire.OP_RAW + struct.pack(">Q", len(b)) + b


def nothing_left(lay):
    return not os.path.isdir(layers.root_of(lay)) or \
        all(".tmp-" not in n for n in os.listdir(layers.root_of(lay)))


def test_a_reference_to_content_the_host_does_not_hold_is_refused(both):
    st, lay = both
    tar = ik.tar_bytes([ik.file_entry("x", BIG_A)], gz=False)
    i = tar.index(BIG_A)
    sha = __import__("hashlib").sha256(BIG_A).digest()
    ops = raw(tar[:i]) + host_wire.OP_FILE + sha + struct.pack(">Q", len(BIG_A)) + \
        raw(tar[i + len(BIG_A):]) + host_wire.OP_END
    with pytest.raises(DigestMismatch, match=f"sha256:{sha.hex()} this host does not hold"):
        send(lay, [recipe_frame(ik.digest(tar), ik.digest(tar), ops)])
    assert not layers.is_present(lay, ik.digest(tar)) and nothing_left(lay)


def test_a_recipe_whose_rebuilt_tar_is_not_its_diff_id_is_refused(both):
    st, lay = both
    tar = ik.tar_bytes([ik.file_entry("x", b"real")], gz=False)
    claimed = ik.digest(b"a lie")
    with pytest.raises(DigestMismatch, match=f"layer {claimed}.*hashes to {ik.digest(tar)}"):
        send(lay, [recipe_frame(claimed, ik.digest(b"blob"), raw(tar) + host_wire.OP_END)])
    assert not layers.is_present(lay, claimed) and nothing_left(lay)


def test_a_referenced_file_that_changed_on_the_host_is_refused(both):
    st, lay = both
    old = base()
    _, infos = put_image(st, ik.make_image({"linux/amd64": [old]}))
    send(lay, wire.iter_layer_frame(st, infos[ik.digest(old)], set()))
    known = wire.known_contents(st, held(lay))
    new = base(os.urandom(30000))
    _, infos2 = put_image(st, ik.make_image({"linux/amd64": [new]}))
    frames = list(wire.iter_layer_frame(st, infos2[ik.digest(new)], known))
    # the host's index is made, then its copy of a.so is damaged
    host_wire.resolver(lay)(ik.digest(BIG_A)[7:])
    target = os.path.join(layers.fs_of(lay, ik.diff_id(old)), "usr", "a.so")
    with open(target, "r+b") as f:
        f.write(b"X")
    with pytest.raises(DigestMismatch, match="does not hold that content"):
        send(lay, frames)
    assert not layers.is_present(lay, ik.diff_id(new)) and nothing_left(lay)


def test_a_refused_layer_frame_does_not_stop_the_frames_after_it(both):
    st, lay = both
    bad = recipe_frame(ik.digest(b"lie"), ik.digest(b"blob"),
                       raw(ik.tar_bytes([ik.file_entry("x", b"1")], gz=False)) + host_wire.OP_END)
    good = base()
    _, infos = put_image(st, ik.make_image({"linux/amd64": [good]}))
    with pytest.raises(DigestMismatch) as exc:
        send(lay, [bad] + list(wire.iter_layer_frame(st, infos[ik.digest(good)], set())))
    assert exc.value.extra["stored"] == [ik.digest(good)]
    assert exc.value.extra["refused"] == [ik.digest(b"blob")]


def test_lower_layers_come_first_and_an_upper_layer_unpacks_on_them(both):
    st, lay = both
    upper = ik.tar_bytes([ik.file_entry("usr/.wh.small", b""), ik.file_entry("usr/new", b"n")])
    m, infos = put_image(st, ik.make_image({"linux/amd64": [base(), upper]}))
    info = infos[ik.digest(upper)]
    assert info.lowers == ((ik.diff_id(base()), ik.digest(base())),)
    with pytest.raises(DigestMismatch, match="lower layer .* is not on this host"):
        send(lay, wire.iter_layer_frame(st, info, set()))
    send(lay, list(wire.iter_layer_frame(st, infos[ik.digest(base())], set()))
         + list(wire.iter_layer_frame(st, info, set())))
    for d, data in ((m, st.read_bytes(m)),):
        store.receive(lay, io.BytesIO(json.dumps({"digest": d, "size": len(data)}).encode()
                                      + b"\n" + data))
    cfg = st.read_json(m)["config"]["digest"]
    data = st.read_bytes(cfg)
    store.receive(lay, io.BytesIO(json.dumps({"digest": cfg, "size": len(data)}).encode()
                                  + b"\n" + data))
    unpack.unpack_image(lay, m)                       # every layer already in the store
    top, _ = unpack.lowerdirs(lay, m)
    assert unpack.is_whiteout(os.path.join(top, "usr", "small"))


def test_the_rate_limit_is_shared_and_holds_the_rate():
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s
    limit = RateLimit(100_000, clock=lambda: now[0], sleep=sleep)
    out = b"".join(limit.wrap([b"x" * 150_000])) + b"".join(limit.wrap([b"y" * 50_000]))
    assert len(out) == 200_000
    assert now[0] == pytest.approx(2.0, abs=0.2)      # 200 kB at 100 kB/s, both streams together


def test_a_stream_cut_inside_a_layer_frame_is_partial_and_leaves_nothing(both):
    st, lay = both
    layer = base()
    _, infos = put_image(st, ik.make_image({"linux/amd64": [layer]}))
    data = b"".join(wire.iter_layer_frame(st, infos[ik.digest(layer)], set()))
    for cut in (len(data) // 2, data.index(b"\n") + 1, len(data) - 2):
        answer = store.receive(lay, io.BytesIO(data[:cut]))     # no refusal: send it again
        assert answer == {"stored": [], "partial": {ik.digest(layer): 0}}, cut
        assert not layers.is_present(lay, ik.diff_id(layer)) and nothing_left(lay)
    assert store.receive(lay, io.BytesIO(data))["stored"] == [ik.digest(layer)]


def test_a_slow_link_fleets_layers_are_compressed_at_build_time_once(both):
    st, lay = both
    layer = base()
    m, infos = put_image(st, ik.make_image({"linux/amd64": [layer]}))

    class Fleet:
        wire, bandwidth, lab = "auto", "1mbit", None
    assert wire.warm(st, Fleet, {m: "linux/amd64"}) == 1
    assert wire.warm(st, Fleet, {m: "linux/amd64"}) == 0              # cached by diff_id
    Fleet.bandwidth = None                                            # a LAN fleet: nothing
    assert wire.warm(st, Fleet, {m: "linux/amd64"}) == 0
    frames = list(wire.iter_layer_frame(st, infos[ik.digest(layer)], set()))
    assert send(lay, frames)["stored"] == [ik.digest(layer)]


def test_a_layer_shared_by_two_platforms_is_sent_on_the_hosts_own_lowers(both):
    st, lay = both
    page = ik.tar_bytes([ik.file_entry("www/index.html", b"p" * 200)])
    arm = ik.tar_bytes([ik.file_entry("bin/arm", b"a" * 300)])
    img = ik.make_image({"linux/amd64": [base(), page], "linux/arm/v7": [arm, page]})
    for d, data in img.blobs.items():
        st.put_bytes(data, expected=d)
    infos = wire.layer_infos(st, {m: p for p, m in img.manifests.items()})
    assert len(infos[ik.digest(page)]) == 2
    on_arm = wire.pick(infos[ik.digest(page)], {ik.digest(arm), ik.digest(page)})
    assert on_arm.lowers == ((ik.diff_id(arm), ik.digest(arm)),)


def test_a_cached_form_is_not_sent_where_references_would_do(both):
    st, lay = both
    old, new = base(), base(os.urandom(30000))
    _, infos = put_image(st, ik.make_image({"linux/amd64": [old]}))
    send(lay, wire.iter_layer_frame(st, infos[ik.digest(old)], set()))
    _, infos2 = put_image(st, ik.make_image({"linux/amd64": [new]}))
    list(wire.iter_chunks(st, infos2[ik.digest(new)], set()))        # cached, as at build time
    known = wire.known_contents(st, held(lay))
    size = sum(map(len, wire.iter_layer_frame(st, infos2[ik.digest(new)], known)))
    assert size < 30000 + 3000, size
