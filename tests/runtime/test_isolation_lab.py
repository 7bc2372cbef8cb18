"""Containers stay in their box on real lab hosts (runc, nftables, qemu-user): the seccomp
filter, network isolation from the host and between services, user namespaces (issue 9)."""
from __future__ import annotations

import pytest

from tests.runtime import imagekit as ik
from tests.runtime.test_agent_lab import make_agent, pyz  # noqa: F401  (module fixture)

# runs the probes, prints one line per finding, then serves /www like the other test images
PROBES = ("grep '^Seccomp:' /proc/self/status; "
          "if /bin/busybox unshare -U /bin/busybox true 2>/dev/null; then echo userns=made; "
          "else echo userns=refused; fi; "
          "if /bin/busybox unshare -n /bin/busybox true 2>/dev/null; then echo netns=made; "
          "else echo netns=refused; fi; ")


@pytest.fixture(scope="module")
def lab():
    """A lab of our own: these tests publish ports and probe the hosts' own services."""
    from tests.conftest import own_lab
    with own_lab("iso", amd64=2, arm64=1, armv7=1) as the_lab:
        yield the_lab


def serve(probes: str = ""):
    return ["/bin/busybox", "sh", "-c",
            probes + "trap 'exit 0' TERM; /bin/busybox httpd -f -p 80 -h /www & wait"]


def logs(agent, service: str) -> str:
    rc, out, err = agent.runner(agent.argv("logs", service), b"", 30)
    assert rc == 0, err
    return out.decode()


@pytest.mark.parametrize("platform", ["linux/amd64", "linux/arm64", "linux/arm/v7"])
def test_seccomp_filter_refuses_namespaces_and_keeps_the_service_running(lab, pyz, static_busybox,  # noqa: F811
                                                                         platform):
    """On every lab host, arm ones through qemu-user included: the filter is on, a user
    namespace cannot be made (no capability is needed for that, only the filter stops it),
    and the service still starts and answers."""
    host = lab.by_platform(platform)[0]
    agent = make_agent(lab, host, pyz)
    img = ik.make_image({p: [ik.busybox_layer(str(static_busybox[p]), b"filtered\n")]
                         for p in ("linux/amd64", platform)}, cmd=serve(PROBES))
    agent.ship(img)
    spec = ik.deploy_spec(port=8180)
    spec["health"] = dict(spec["health"], interval=1.0, retries=15)
    rc, body = agent.apply({"probe": (img, spec)})
    assert rc == 0 and body["services"]["probe"]["ok"], body
    assert ik.hammer_get(host.address, 8180) == b"filtered\n"
    out = logs(agent, "probe")
    assert "Seccomp:\t2" in out, out                       # mode 2: a filter is installed
    assert "userns=refused" in out and "netns=refused" in out, out
