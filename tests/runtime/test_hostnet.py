"""deploy: {network: host}: the spec, the bundle, the planner's stop-first, the health address,
the fleet plan's words, and the manifest checks (located, with did-you-mean)."""
import socket
import threading

import pytest

from orchestrator.errors import ManifestError
from orchestrator.fleet.planner import DesiredRelease, HostFacts, plan_fleet
from orchestrator.fleet.report import plan_to_json, render_plan
from orchestrator.manifest import load_desired
from runtime import health, planner
from runtime.bundle import BundleInput, render_config
from runtime.host import want_of
from runtime.planner import Box, Current, Observed, Start, Stop, SyncPorts, Want
from runtime.spec import Deploy, Health, SpecError, Target

HOSTNET = {"network": "host", "ports": [{"host": 8080, "container": 8080, "protocol": "tcp"}]}


# --- spec -------------------------------------------------------------------------------

def test_host_network_is_in_the_release_json_and_the_default_is_not():
    d = Deploy.from_json(HOSTNET)
    assert d.host_network and d.to_json()["network"] == "host"
    assert Deploy.from_json(d.to_json()) == d
    assert "network" not in Deploy().to_json()       # every bridged release id stays as it was
    assert Deploy.from_json({"network": "bridge"}) == Deploy()


@pytest.mark.parametrize("deploy,path,words", [
    ({"network": "hots"}, ("network",), "expected one of bridge, host"),
    ({"network": "host", "ports": [{"host": 8080, "container": 80}]}, ("ports", 0),
     'no DNAT maps 8080 to 80: write "80:80"'),
    ({"network": "host", "needs": ["store"]}, ("needs",), "published ports"),
    ({"network": "host", "userns": True}, ("userns",), "user namespace"),
])
def test_the_agent_refuses_what_host_networking_cannot_honour(deploy, path, words):
    with pytest.raises(SpecError) as err:
        Deploy.from_json(deploy)
    assert err.value.path == path and words in err.value.reason


# --- bundle -----------------------------------------------------------------------------

def test_a_host_network_container_joins_the_hosts_network_namespace():
    b = BundleInput("oabc-web-a", "web", "/c/rootfs", "/orch/oabc-web-a")
    img = {"config": {"Cmd": ["/bin/httpd"]}}
    kinds = lambda d: [n["type"] for n in render_config(img, d, b)["linux"]["namespaces"]]  # noqa: E731
    assert kinds(Deploy.from_json(HOSTNET)) == ["pid", "ipc", "uts", "mount"]
    assert kinds(Deploy()) == ["pid", "network", "ipc", "uts", "mount"]


# --- agent planner ----------------------------------------------------------------------

M = "sha256:" + "1" * 64


def hostnet_want(release: str) -> Want:
    return want_of("web", Target(release, "idx", M, Deploy.from_json(HOSTNET)))


def test_a_host_network_service_is_replaced_stop_first_and_says_why():
    w = hostnet_want("r2")
    assert w.exclusive and w.ports == (("tcp", 8080, 8080),)
    o = Observed(boxes=(Box("web", "a", "r1", "i-a1", "running", ""),),
                 current=(Current("web", "r1", "a"),), images=frozenset({M}))
    steps = planner.plan((w,), o)
    assert steps == [Stop("web", "a", "stop-first: network: host, two slots cannot share "
                          "the host's ports")]
    assert not any(isinstance(s, (Start, SyncPorts)) for s in steps)   # no DNAT for it, ever
    # once the old slot is gone, the new one starts in the other slot
    gone = Observed(current=(Current("web", "r1", "a"),), images=frozenset({M}))
    assert planner.plan((w,), gone) == [Start("web", "b", "r2")]


def test_a_stateful_service_still_says_stateful():
    w = want_of("db", Target("r2", "idx", M, Deploy(stateful=True)))
    o = Observed(boxes=(Box("db", "a", "r1", "i-a1", "running", "10.88.0.2"),),
                 current=(Current("db", "r1", "a"),), images=frozenset({M}))
    assert planner.plan((w,), o) == [Stop("db", "a", "stop-first: stateful, one slot at a time")]


# --- health -----------------------------------------------------------------------------

def test_a_container_without_an_address_is_probed_on_loopback():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(5)
    port = srv.getsockname()[1]
    seen = []

    def serve():
        try:
            c, _ = srv.accept()
        except OSError:
            return
        seen.append(c.recv(1024))
        c.sendall(b"HTTP/1.0 200 OK\r\n\r\n")
        c.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    ok, msg = health.probe(Health(kind="http", path="/up", port=port), "", lambda c, t: 1)
    t.join(5)
    srv.close()
    assert ok, msg
    assert seen and seen[0].startswith(b"GET /up ")


# --- orch plan --------------------------------------------------------------------------

def test_orch_plan_says_stop_first_and_why():
    rel = DesiredRelease("web", "r-new", "idx", {"linux/amd64": "m"}, Deploy.from_json(HOSTNET).to_json(),
                         ("a1",))
    facts = {"a1": HostFacts("a1", "linux/amd64", releases={"web": "r-old"})}
    plan = plan_fleet([rel], facts, {"m": [("m", 10)]}, {"web": (0, 1)})
    assert ("~ web: r-old -> r-new (replace container, stop-first: network: host, two slots "
            "cannot share the host's ports)") in render_plan(plan)
    assert plan_to_json(plan)["hosts"][0]["changes"][0]["stop_first"].startswith("network: host")
    fresh = plan_fleet([rel], {"a1": HostFacts("a1", "linux/amd64")}, {"m": [("m", 10)]},
                       {"web": (0, 1)})
    assert "+ web: install r-new" in render_plan(fresh)          # nothing to stop on a first install


# --- manifests --------------------------------------------------------------------------

def service(name: str, extra: str = "", ports: str = '["8080:8080"]') -> str:
    return (f"kind: Service\nname: {name}\nimage:\n  from: scratch\n  cmd: [/x]\ndeploy:\n"
            f"  ports: {ports}\n{extra}")


def load(tmp_path, *docs):
    for i, d in enumerate(docs):
        (tmp_path / f"s{i}.yaml").write_text(d)
    return load_desired(str(tmp_path))


def test_a_manifest_asks_for_host_networking(tmp_path):
    d = load(tmp_path, service("web", "  network: host\n  health: {http: /}\n"))
    j = d.services["web"].deploy.to_agent_json()
    assert j["network"] == "host" and j["health"]["port"] == 8080


@pytest.mark.parametrize("docs,where,words", [
    ((service("web", "  network: hots\n"),), "s0.yaml:8 services/web/deploy/network",
     'expected bridge or host, got "hots" (did you mean "host"?)'),
    ((service("web", "  network: host\n", ports='["8080:80"]'),), "s0.yaml:7 services/web/deploy/ports/0",
     'write "80:80"'),
    ((service("web", "  network: host\n  needs: [db]\n"), service("db", ports='["5432:5432"]')),
     "services/web/deploy/needs", "published ports"),
    ((service("app", "  needs: [web]\n", ports='["8081:80"]'), service("web", "  network: host\n")),
     "services/app/deploy/needs", 'service "web" runs with network: host'),
    ((service("app", ports='["8080:80"]'), service("web", "  network: host\n")),
     "services/web/deploy/ports/0", 'already published by service "app"'),
])
def test_host_networking_mistakes_are_refused_located(tmp_path, docs, where, words):
    with pytest.raises(ManifestError) as err:
        load(tmp_path, *docs)
    assert where in str(err.value) and words in str(err.value), str(err.value)


# --- admission ----------------------------------------------------------------------------

def test_a_host_network_release_may_take_over_the_port_its_previous_release_listens_on():
    from runtime.admission import check_ports
    from runtime.errors import BadRequest
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    try:
        d = Deploy(network="host", ports=(Deploy.from_json(
            {"ports": [{"host": port, "container": port}]}).ports[0],))
        check_ports({}, {"edge": d}, {"edge": d})            # its own container listens there
        with pytest.raises(BadRequest, match=f"{port}/tcp is already in use by a process"):
            check_ports({}, {"edge": d})                     # a first install: someone else's
        bridged = Deploy(ports=d.ports)
        with pytest.raises(BadRequest, match="already in use"):
            check_ports({}, {"edge": d}, {"edge": bridged})  # a bridged release listens on nothing
    finally:
        srv.close()
