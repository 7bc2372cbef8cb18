"""An init as PID 1 on real lab hosts: busybox httpd, which ignores SIGTERM as PID 1, stops in
milliseconds with it, and waits for stop_timeout without it (deploy `init: false`)."""
from __future__ import annotations

import time

import pytest

from orchestrator.agent.bundle import build_agent_pyz
from tests.runtime import imagekit as ik

# no trap, no shell: httpd itself is the service, as in manifests/hello.yaml
PLAIN_HTTPD = ["/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/www"]
STOP_TIMEOUT = 4.0       # without the init the stop waits this long
LONG_TIMEOUT = 30.0      # with it, a stop far shorter than this proves TERM reached httpd (robust on a loaded machine)


@pytest.fixture(scope="module")
def pid1_lab():
    from tests.conftest import own_lab
    with own_lab("pid1", amd64=1, arm64=1) as the_lab:
        yield the_lab


@pytest.fixture(scope="module")
def agents(pid1_lab, tmp_path_factory):
    pyz, _ = build_agent_pyz(tmp_path_factory.mktemp("agent"))
    out = {}
    for host in pid1_lab.layout.hosts():
        h = pid1_lab.host(host.name)
        out[h.platform] = (h, ik.lab_agent(pid1_lab, h, pyz))
    return out


def deploy_and_time_removal(agent, host, busybox, name: str, port: int, stop_timeout: float,
                            **spec_over) -> float:
    img = ik.make_image({host.platform: [ik.busybox_layer(str(busybox), name.encode() + b"\n")]},
                        cmd=PLAIN_HTTPD)
    agent.ship(img)
    spec = ik.deploy_spec(port=port, stop_timeout=stop_timeout, **spec_over)
    spec["health"] = dict(spec["health"], interval=1.0, retries=15)
    rc, body = agent.apply({name: (img, spec)})
    assert rc == 0 and body["services"][name]["ok"], body
    assert ik.hammer_get(host.address, port) == name.encode() + b"\n"
    t = time.monotonic()
    rc, body = agent.call("remove", name)
    took = time.monotonic() - t
    assert rc == 0, body
    return took


@pytest.mark.parametrize("platform", ["linux/amd64", "linux/arm64"])
def test_sigterm_stops_httpd_at_once_with_the_init(agents, static_busybox, platform):
    host, agent = agents[platform]
    rc, info = agent.call("info")
    assert rc == 0 and info["init"], info              # the host's static tini/catatonit
    took = deploy_and_time_removal(agent, host, static_busybox[platform], "quick", 8080, LONG_TIMEOUT)
    # the whole remove verb (a python3 agent process, stop, unwire, unmount) far under the timeout
    assert took < LONG_TIMEOUT / 6, took


def test_without_the_init_the_stop_waits_for_the_timeout(agents, static_busybox):
    host, agent = agents["linux/amd64"]
    took = deploy_and_time_removal(agent, host, static_busybox["linux/amd64"], "slow", 8081, STOP_TIMEOUT,
                                   init=False)
    assert took >= STOP_TIMEOUT, took
