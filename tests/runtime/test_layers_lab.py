"""The layer store on a real lab host (runc, overlay): a second release that shares the base
layer does not unpack it again; whiteouts and opaque directories of an upper layer hide what
is below in the running container; gc removes the layers no kept release uses."""
from __future__ import annotations

import json
import time

import pytest

from orchestrator.agent.bundle import build_agent_pyz
from tests.runtime import imagekit as ik



@pytest.fixture(scope="module")
def layers_lab(tmp_path_factory):
    from tests.conftest import own_lab
    with own_lab("layers", amd64=1) as the_lab:
        host = the_lab.hosts[0]
        pyz, _ = build_agent_pyz(tmp_path_factory.mktemp("agent"))
        yield the_lab, host, ik.lab_agent(the_lab, host, pyz)


@pytest.fixture(scope="module")
def base_layer(static_busybox):
    return ik.busybox_layer(str(static_busybox["linux/amd64"]), b"base\n", extra=[
        ik.file_entry("www/gone.html", b"gone\n"), ik.dir_entry("www/old"),
        ik.file_entry("www/old/a.html", b"old\n")])


def page(text: str, *extra) -> bytes:
    return ik.tar_bytes([ik.dir_entry("www"), ik.file_entry("www/index.html",
                                                            text.encode() + b"\n"), *extra])


def layer_stats(lab, host) -> dict:
    """diff_id hex -> (inode, mtime_ns) of every layer directory on the host."""
    code = ("import json, os\nr = '/var/lib/orch/layers'\n"
            "print(json.dumps({n: [os.stat(os.path.join(r, n)).st_ino, "
            "os.stat(os.path.join(r, n, 'fs')).st_mtime_ns] for n in os.listdir(r)}))\n")
    rc, out, err = lab.run(host, ["python3", "-c", code])
    assert rc == 0, err
    return json.loads(out)


def deploy(agent, img, **spec):
    agent.ship(img)
    rc, body = agent.apply({"web": (img, ik.deploy_spec(port=8080, **spec))})
    assert rc == 0 and body["services"]["web"]["ok"], body
    return body


def get(host, path):
    try:
        return ik.hammer_get(host.address, 8080, path=path)
    except OSError:
        return None


def test_a_release_sharing_the_base_unpacks_only_its_new_layer(layers_lab, base_layer):
    lab, host, agent = layers_lab
    one = ik.make_image({"linux/amd64": [base_layer, page("one")]})
    deploy(agent, one, keep_releases=1)
    assert get(host, "/") == b"one\n" and get(host, "/gone.html") == b"gone\n"
    first = layer_stats(lab, host)
    base_hex = ik.diff_id(base_layer)[7:]
    assert sorted(first) == sorted([base_hex, ik.diff_id(page("one"))[7:]])

    # release 2: same base; its top layer removes a file (whiteout) and a directory's old
    # content (opaque) of the base
    two_top = page("two", ik.file_entry("www/.wh.gone.html", b""), ik.dir_entry("www/old"),
                   ik.file_entry("www/old/.wh..wh..opq", b""),
                   ik.file_entry("www/old/b.html", b"new\n"))
    two = ik.make_image({"linux/amd64": [base_layer, two_top]})
    deploy(agent, two, keep_releases=1)
    assert get(host, "/") == b"two\n"
    assert get(host, "/gone.html") is None                 # whited out
    assert get(host, "/old/a.html") is None                # hidden by the opaque dir
    assert get(host, "/old/b.html") == b"new\n"
    second = layer_stats(lab, host)
    assert second[base_hex] == first[base_hex]             # not unpacked again: same inode, mtime
    assert ik.diff_id(two_top)[7:] in second

    # keep_releases 1: once release one's container has stopped (after its drain, on the
    # host), gc removes release one and its own layer, and keeps the shared base
    one_top = ik.diff_id(page("one"))[7:]
    deadline = time.monotonic() + 30
    while True:
        rc, body = agent.call("gc")
        assert rc == 0, body
        if one_top not in layer_stats(lab, host) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert sorted(layer_stats(lab, host)) == sorted([base_hex, ik.diff_id(two_top)[7:]])
    assert layer_stats(lab, host)[base_hex] == first[base_hex]
    assert get(host, "/") == b"two\n"

    # each layer is on the disk once: a layer's blob goes once the layer is stored; one that
    # arrives for a layer already stored (this test's ship sends every blob, where orch asks
    # `have` first; or an older agent left it) goes at gc once older than the grace period
    blobs = lambda: lab.run(host, ["ls", "/var/lib/orch/blobs/sha256"])[1].decode().split()   # noqa: E731
    assert ik.digest(two_top)[7:] not in blobs(), blobs()
    base_blob = f"/var/lib/orch/blobs/sha256/{ik.digest(base_layer)[7:]}"
    rc, _, err = lab.run(host, ["sh", "-c", 'cat > "$1" && touch -d "2 hours ago" "$1"', "-",
                                base_blob], base_layer, 30)
    assert rc == 0, err
    rc, body = agent.call("gc")
    assert rc == 0, body
    assert ik.digest(base_layer) in body["removed_blobs"], body
    assert ik.digest(base_layer)[7:] not in blobs()
    assert layer_stats(lab, host)[base_hex] == first[base_hex]
    assert get(host, "/") == b"two\n"
