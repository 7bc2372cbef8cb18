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


def probe(name: str, shell_test: str) -> str:
    return f"if {shell_test}; then echo {name}=reached; else echo {name}=blocked; fi; "


def reaches_http(address: str, port: int) -> str:
    # (busybox's own wget -T crashes: the timeout comes from busybox timeout)
    return f"/bin/busybox timeout 4 /bin/busybox wget -q -O /dev/null http://{address}:{port}/"


def reaches_ssh(address: str) -> str:
    return f"echo | /bin/busybox nc -w 3 {address} 22 | /bin/busybox grep -q SSH"


def slot_ip(agent, service: str) -> str:
    rc, body = agent.call("status")
    st = body["services"][service]
    return st["slots"][st["slot"]]["ip"]


def test_network_isolation_of_the_host_and_between_services(lab, pyz, base_layer_iso):  # noqa: F811
    """From inside a container: the host's sshd (on its own address and on the bridge gateway)
    and another service's container are out of reach; a published port (public anyway) and
    another host (outbound NAT) are reachable; and the published ports work from outside."""
    h1, h2 = lab.by_platform("linux/amd64")[:2]
    a1, a2 = make_agent(lab, h1, pyz), make_agent(lab, h2, pyz)
    web = ik.make_image({"linux/amd64": [base_layer_iso]}, cmd=serve())
    for agent in (a1, a2):
        agent.ship(web)
        rc, body = agent.apply({"web": (web, ik.deploy_spec(port=8181))})
        assert rc == 0, body
    web_ip = slot_ip(a1, "web")
    probes = (probe("own-host-ssh", reaches_ssh(h1.address)) + probe("gateway-ssh", reaches_ssh("10.88.0.1"))
              + probe("other-service", reaches_http(web_ip, 80))
              + probe("published-port", reaches_http(h1.address, 8181))
              + probe("other-host", reaches_http(h2.address, 8181)))
    prober = ik.make_image({"linux/amd64": [base_layer_iso]}, cmd=serve(probes))
    a1.ship(prober)
    spec = ik.deploy_spec(port=8182)
    spec["health"] = dict(spec["health"], interval=1.0, retries=40)
    rc, body = a1.apply({"prober": (prober, spec)})
    assert rc == 0, body
    out = logs(a1, "prober")
    for name in ("own-host-ssh", "gateway-ssh", "other-service"):
        assert f"{name}=blocked" in out, out
    for name in ("published-port", "other-host"):
        assert f"{name}=reached" in out, out
    for port in (8181, 8182):                      # from outside (the test runner's namespace)
        assert ik.hammer_get(h1.address, port) == b"base\n"


def test_slots_of_one_service_reach_each_other(lab, pyz, base_layer_iso):  # noqa: F811
    """Blue and green of the same service may talk (green reaches blue while both run)."""
    host = lab.by_platform("linux/amd64")[0]
    agent = make_agent(lab, host, pyz)
    blue = ik.make_image({"linux/amd64": [base_layer_iso]}, cmd=serve("echo blue; "))
    agent.ship(blue)
    assert agent.apply({"pair": (blue, ik.deploy_spec(port=8183))})[0] == 0
    blue_ip = slot_ip(agent, "pair")
    green = ik.make_image({"linux/amd64": [base_layer_iso]},
                          cmd=serve(probe("sibling", reaches_http(blue_ip, 80))))
    agent.ship(green)
    spec = ik.deploy_spec(port=8183)
    spec["health"] = dict(spec["health"], interval=1.0, retries=20)
    rc, body = agent.apply({"pair": (green, spec)})
    assert rc == 0, body
    assert "sibling=reached" in logs(agent, "pair")


@pytest.fixture(scope="module")
def base_layer_iso(static_busybox):
    return ik.busybox_layer(str(static_busybox["linux/amd64"]), page=b"base\n")


HOST_UID = ("import json, glob, sys\n"
            "for p in glob.glob('/var/lib/orch/containers/*/meta.json'):\n"
            "    m = json.load(open(p))\n"
            "    if m['service'] == sys.argv[1]:\n"
            "        st = open('/proc/%d/status' % m['pid']).read()\n"
            "        print([l.split()[1] for l in st.splitlines() if l.startswith('Uid:')][0])\n")


def test_user_namespace_root_in_the_container_is_not_root_outside(lab, pyz, base_layer_iso):  # noqa: F811
    """deploy: {userns: true}: the service is uid 0 inside, a high unprivileged uid as seen
    from the host; it can still write its volume and read its secret."""
    import base64
    host = lab.by_platform("linux/amd64")[1]
    agent = make_agent(lab, host, pyz)
    img = ik.make_image({"linux/amd64": [base_layer_iso]}, cmd=serve(
        "echo inside=$(/bin/busybox id -u); /bin/busybox cat /proc/self/uid_map; "
        "echo written > /data/f && echo volume=ok; /bin/busybox cat /run/secrets/pw; echo; "))
    agent.ship(img)
    spec = ik.deploy_spec(port=8184, userns=True,
                          volumes=[{"name": "nsdata", "dest": "/data", "readonly": False}],
                          secrets=[{"name": "pw", "dest": "/run/secrets/pw"}])
    rc, body = agent.apply({"userns": (img, spec)},
                           secrets={"userns": {"pw": base64.b64encode(b"ns-secret").decode()}})
    assert rc == 0 and body["services"]["userns"]["ok"], body
    assert ik.hammer_get(host.address, 8184) == b"base\n"
    out = logs(agent, "userns")
    assert "inside=0" in out and "volume=ok" in out and "ns-secret" in out, out
    rc, uid, err = lab.run(host, ["python3", "-c", HOST_UID, "userns"])
    assert rc == 0, err
    assert int(uid) >= 1 << 20, uid                # not root, nor any ordinary user of the host
    plain = ik.make_image({"linux/amd64": [base_layer_iso]}, cmd=serve())
    agent.ship(plain)
    assert agent.apply({"plainroot": (plain, ik.deploy_spec(port=8185))})[0] == 0
    rc, uid_plain, err = lab.run(host, ["python3", "-c", HOST_UID, "plainroot"])
    assert rc == 0 and int(uid_plain) == 0          # without the switch: root as before
