"""Real applications on a real lab host (runc, nftables). Names: the app reaches the
store by name through its stable address, which follows a blue/green replace of the store;
a service that does not declare the dependency cannot connect (issue 13)."""
from __future__ import annotations

import time

import pytest

from runtime import names
from tests.runtime import imagekit as ik
from tests.runtime.test_agent_lab import make_agent, pyz  # noqa: F401  (module fixture)


@pytest.fixture(scope="module")
def lab():
    from tests.conftest import own_lab
    with own_lab("apps", amd64=1, arm64=0) as the_lab:
        yield the_lab


@pytest.fixture(scope="module")
def layer(static_busybox):
    return ik.busybox_layer(str(static_busybox["linux/amd64"]), page=b"base\n")


def watcher(url: str):
    """Serves /tmp (the root is read-only); every 0.3 s fetches ``url`` into /tmp/seen (or
    writes 'blocked')."""
    fetch = (f"while true; do /bin/busybox timeout 2 /bin/busybox wget -q -O /tmp/seen.tmp {url} "
             "|| echo blocked > /tmp/seen.tmp; /bin/busybox mv /tmp/seen.tmp /tmp/seen; "
             "/bin/busybox sleep 0.3; done")
    return ["/bin/busybox", "sh", "-c",
            "/bin/busybox cp /www/index.html /tmp/index.html; "
            f"({fetch}) & trap 'exit 0' TERM; /bin/busybox httpd -f -p 80 -h /tmp & wait"]


def seen(address: str, port: int) -> bytes:
    return ik.hammer_get(address, port, path="/seen")


def wait_for(address: str, port: int, want: bytes, seconds: float = 20.0) -> bytes:
    deadline = time.monotonic() + seconds
    got = b""
    while time.monotonic() < deadline:
        try:
            got = seen(address, port)
        except OSError:
            got = b""
        if got == want:
            return got
        time.sleep(0.3)
    return got


def first_seen(address: str, port: int, seconds: float = 20.0) -> bytes:
    """What the watcher wrote after its first fetch: /seen is absent (404) until then."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return seen(address, port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def store_image(layer_page: bytes, static_busybox):
    return ik.make_image({"linux/amd64": [ik.busybox_layer(str(static_busybox["linux/amd64"]),
                                                           page=layer_page)]})


def test_the_app_reaches_the_store_by_name_across_a_replace_and_a_stranger_cannot(
        lab, pyz, layer, static_busybox):  # noqa: F811
    host = lab.hosts[0]
    agent = make_agent(lab, host, pyz)
    store_v1 = store_image(b"store v1\n", static_busybox)
    app = ik.make_image({"linux/amd64": [layer]}, cmd=watcher("http://store/"))
    stranger = ik.make_image({"linux/amd64": [layer]},
                             cmd=watcher(f"http://{names.vip_of('store')}/"))
    for img in (store_v1, app, stranger):
        agent.ship(img)
    spec_store = ik.deploy_spec(port=8290)
    spec_app = dict(ik.deploy_spec(port=8291), needs=["store"])
    spec_stranger = ik.deploy_spec(port=8292)
    rc, body = agent.apply({"store": (store_v1, spec_store)})
    assert rc == 0, body
    rc, body = agent.apply({"app": (app, spec_app), "stranger": (stranger, spec_stranger)})
    assert rc == 0, body

    assert wait_for(host.address, 8291, b"store v1\n") == b"store v1\n"      # by name
    assert first_seen(host.address, 8292) == b"blocked\n"                     # no declared need

    store_v2 = store_image(b"store v2\n", static_busybox)                   # blue/green of the store
    agent.ship(store_v2)
    rc, body = agent.apply({"store": (store_v2, spec_store)})
    assert rc == 0, body
    assert wait_for(host.address, 8291, b"store v2\n") == b"store v2\n"      # the name followed
    assert seen(host.address, 8292) == b"blocked\n"

    rc, out, err = agent.runner(["nft", "list", "map", "ip", "orch", "vips"], b"", 30)
    assert names.vip_of("store") in out.decode(), out

    # a blue/green replace of the app under a client loop: no request lost, and the new app
    # reaches the store by name at once
    app_v2 = ik.make_image({"linux/amd64": [ik.busybox_layer(str(static_busybox["linux/amd64"]),
                                                             page=b"app v2\n")]},
                           cmd=watcher("http://store.orch/"))
    agent.ship(app_v2)
    with ik.Hammer(host.address, 8291) as hammer:
        rc, body = agent.apply({"app": (app_v2, dict(spec_app, drain=1.0))})
        time.sleep(0.5)
    assert rc == 0 and body["services"]["app"]["ok"], body
    assert hammer.failed == [] and hammer.ok > 20, (hammer.ok, hammer.failed[:3])
    assert b"app v2\n" in hammer.bodies                     # the index page moved to v2
    assert wait_for(host.address, 8291, b"store v2\n") == b"store v2\n"


def journal_steps(agent, service: str):
    rc, out, err = agent.runner(["cat", "/var/lib/orch/state/journal.log"], b"", 30)
    assert rc == 0, err
    import json
    steps = []
    for line in out.decode().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("phase", rec.get("event")) == "begin" and rec.get("service") == service:
            steps.append((rec.get("step"), rec.get("slot")))
    return steps


def test_a_stateful_store_is_replaced_stop_first_and_keeps_its_data(lab, pyz, layer,  # noqa: F811
                                                                     static_busybox):
    """stateful: never two slots on the volume (the old one stops, running its pre_stop hook,
    before the new one starts) and the data on the volume outlives the replace."""
    host = lab.hosts[0]
    agent = make_agent(lab, host, pyz)
    keeper = ["/bin/busybox", "sh", "-c",
              "echo started-$(/bin/busybox cat /www/index.html) >> /data/log; "
              "/bin/busybox cp /data/log /tmp/index.html; "
              "trap 'exit 0' TERM; /bin/busybox httpd -f -p 80 -h /tmp & wait"]
    spec = dict(ik.deploy_spec(port=8293), stateful=True, stop_timeout=10.0,
                pre_stop=["/bin/busybox", "sh", "-c", "echo pre-stop >> /data/log"],
                volumes=[{"name": "kv", "dest": "/data", "readonly": False}])
    v1 = ik.make_image({"linux/amd64": [ik.busybox_layer(str(static_busybox["linux/amd64"]),
                                                         page=b"v1")]}, cmd=keeper)
    v2 = ik.make_image({"linux/amd64": [ik.busybox_layer(str(static_busybox["linux/amd64"]),
                                                         page=b"v2")]}, cmd=keeper)
    for img in (v1, v2):
        agent.ship(img)
    rc, body = agent.apply({"kv": (v1, spec)})
    assert rc == 0 and body["services"]["kv"]["ok"], body
    rc, body = agent.apply({"kv": (v2, spec)})
    assert rc == 0 and body["services"]["kv"]["ok"], body
    # v2 found v1's data, and v1's pre_stop ran before v2 started
    assert ik.hammer_get(host.address, 8293) == b"started-v1\npre-stop\nstarted-v2\n"
    steps = [s for s in journal_steps(agent, "kv") if s[0] in ("Start", "Stop")]
    assert steps[-2:] == [("Stop", "a"), ("Start", "b")], steps
    rc, body = agent.call("volumes")                      # the volume is the store's own
    assert rc == 0, body
    mine = [v for v in body["volumes"] if v["name"] == "kv"]
    assert [(v["service"], v["path"]) for v in mine] == [("kv", "/var/lib/orch/volumes/_services/kv/kv")]
    assert mine[0]["bytes"] > 0
