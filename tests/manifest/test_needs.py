"""deploy.needs: services that reach each other by name; checked at load time, located."""
import pytest

from orchestrator.errors import ManifestError
from orchestrator.manifest import load_desired
from orchestrator.manifest.loader import needs_order


def service(name: str, needs=None, port: int = 8080) -> str:
    lines = [f"kind: Service", f"name: {name}", "image:", "  from: scratch", "  cmd: [/x]",
             "deploy:", f'  ports: ["{port}:80"]']
    if needs is not None:
        lines.append(f"  needs: {needs}")
    return "\n".join(lines) + "\n"


def write(tmp_path, *docs):
    for i, d in enumerate(docs):
        (tmp_path / f"s{i}.yaml").write_text(d)
    return str(tmp_path)


def test_needs_reach_the_agent_spec_and_order_stores_first(tmp_path):
    d = load_desired(write(tmp_path, service("app", "[store, cache]", 8080), service("store", port=8081),
                           service("cache", "[store]", 8082)))
    assert d.services["app"].deploy.to_agent_json()["needs"] == ["cache", "store"]
    assert "needs" not in d.services["store"].deploy.to_agent_json()   # release ids unchanged without it
    assert needs_order(d.services) == ["store", "cache", "app"]


@pytest.mark.parametrize("docs,words", [
    ((service("app", "[stor]"), service("store", port=8081)), 'no service "stor" in the manifests'),
    ((service("app", "[app]"),), "cannot need itself"),
    ((service("a", "[b]"), service("b", "[a]", 8081)), "in a cycle: a -> b -> a"),
    ((service("app", "[Store_1]"),), "expected a name of lower-case letters"),
])
def test_bad_needs_are_refused_located(tmp_path, docs, words):
    with pytest.raises(ManifestError) as err:
        load_desired(write(tmp_path, *docs))
    assert words in str(err.value)
    assert "deploy/needs" in str(err.value) and ".yaml:" in str(err.value)


def test_stateful_gets_a_longer_stop_timeout_and_a_pre_stop_hook(tmp_path):
    doc = service("db") + "  stateful: true\n  pre_stop: [/usr/bin/redis-cli, shutdown, save]\n"
    d = load_desired(write(tmp_path, doc)).services["db"].deploy.to_agent_json()
    assert d["stateful"] is True and d["stop_timeout"] == 30.0
    assert d["pre_stop"] == ["/usr/bin/redis-cli", "shutdown", "save"]
    plain = load_desired(write(tmp_path, service("db"))).services["db"].deploy.to_agent_json()
    assert "stateful" not in plain and plain["stop_timeout"] == 10.0


def test_an_empty_pre_stop_is_refused_located(tmp_path):
    with pytest.raises(ManifestError) as err:
        load_desired(write(tmp_path, service("db") + "  pre_stop: []\n"))
    assert "deploy/pre_stop" in str(err.value) and "expected a command" in str(err.value)


FLEET = """kind: Fleet
name: shop
hosts:
  - {name: pi-db, address: 192.168.1.30, labels: {role: db}}
  - {name: pi-web, address: 192.168.1.31, labels: {role: web}}
"""


def test_templates_use_the_fleets_inventory_to_point_across_hosts(tmp_path):
    app = service("web") + "  env: {DB: \"redis://{{ hosts['pi-db'].address }}:6379\"}\n"
    d = load_desired(write(tmp_path, app, FLEET))               # the Fleet may come after
    assert d.services["web"].deploy.env["DB"] == "redis://192.168.1.30:6379"


def test_a_lab_fleets_inventory_is_known_before_the_lab_is_up(tmp_path):
    lab = "kind: Fleet\nname: invlab\nlab: {hosts: 1, arm64: 1}\n"
    app = service("web") + "  env: {PEER: \"{{ hosts['arm64-1'].address }}\"}\n"
    d = load_desired(write(tmp_path, lab, app))
    assert d.services["web"].deploy.env["PEER"].count(".") == 3


def test_an_unknown_host_in_a_template_is_located(tmp_path):
    app = service("web") + "  env: {DB: \"{{ hosts['pi-nope'].address }}\"}\n"
    with pytest.raises(ManifestError) as err:
        load_desired(write(tmp_path, FLEET, app))
    assert "deploy/env/DB" in str(err.value) and "pi-nope" in str(err.value)
