"""The deploy spec (runtime/spec.py): one shape, one set of defaults, one validation."""
import math

import pytest
from hypothesis import given, strategies as st

from runtime.errors import BadRequest
from runtime.spec import Deploy, SpecError, Target, check_service_name, parse_deploy
from tests.runtime.imagekit import deploy_spec


def test_the_test_spec_is_valid_and_round_trips():
    d = parse_deploy("web", deploy_spec())
    assert d.to_json() == deploy_spec()


def test_defaults_are_the_same_on_both_sides():
    """An empty spec means what the manifest model means by default (drain was 0.0 here and
    2.0 there)."""
    from orchestrator.manifest.model import DeploySpec
    assert Deploy.from_json({}) == DeploySpec().agent_spec()
    assert Deploy.from_json({}).drain == 2.0


@pytest.mark.parametrize("change,where", [
    ({"volumes": [{"name": "../../etc", "dest": "/data"}]}, "volumes/0/name"),
    ({"volumes": [{"name": "data", "dest": "relative"}]}, "volumes/0/dest"),
    ({"volumes": [{"name": "data", "dest": "/proc/sys"}]}, "volumes/0/dest"),
    ({"volumes": [{"name": "data", "dest": "/"}]}, "volumes/0/dest"),
    ({"volumes": [{"name": "data", "dest": "/data", "size": 1}]}, "volumes/0/size"),
    ({"secrets": [{"name": "a/b", "dest": "/run/secrets/x"}]}, "secrets/0/name"),
    ({"secrets": [{"name": "pw", "dest": "/run/../etc/shadow"}]}, "secrets/0/dest"),
    ({"secrets": [{"name": "pw", "dest": "/dev/sda"}]}, "secrets/0/dest"),
    ({"ports": [{"host": 0, "container": 80}]}, "ports/0/host"),
    ({"ports": [{"host": "80", "container": 80}]}, "ports/0/host"),
    ({"ports": [{"host": 80, "container": 80, "protocol": "sctp"}]}, "ports/0/protocol"),
    ({"health": {"kind": "grpc"}}, "health/kind"),
    ({"health": {"kind": "exec", "command": []}}, "health/command"),
    ({"health": {"kind": "tcp", "port": 80, "interval": 0}}, "health/interval"),
    ({"drain": -1}, "drain"),
    ({"monitor": float("inf")}, "monitor"),
    ({"env": {"A=B": "x"}}, "env"),
    ({"env": {"A": 1}}, "env/A"),
    ({"resources": {"memory": 1, "pids": None, "cpus": None}}, "resources/memory"),
    ({"resources": {"memory": None, "pids": None, "cpus": float("nan")}}, "resources/cpus"),
    ({"resources": {"memory": None, "pids": None, "cpus": 0}}, "resources/cpus"),
    ({"keep_releases": 0}, "keep_releases"),
    ({"stop_first": "yes"}, "stop_first"),
    ({"surprise": 1}, "surprise"),
])
def test_bad_specs_are_refused_with_their_path(change, where):
    with pytest.raises(BadRequest, match=f"^services/web/deploy/{where}: "):
        parse_deploy("web", deploy_spec(**change))


@pytest.mark.parametrize("name", ["my_app", "my.app", "a" * 41, "b" * 63, "Web", "-x", ""])
def test_service_names_the_agent_refuses(name):
    with pytest.raises(SpecError, match="expected a service name"):
        check_service_name(name)


def test_a_target_names_where_its_spec_is_wrong():
    with pytest.raises(BadRequest, match="^services/web/deploy/resources/cpus: "):
        Target.from_json("web", {"release": "r-1", "index": "i", "manifest": "m",
                                 "deploy": deploy_spec(resources={"cpus": math.nan})})


seconds = st.floats(min_value=0, max_value=3600, allow_nan=False)
ports = st.lists(st.builds(lambda h, c, p: {"host": h, "container": c, "protocol": p},
                           st.integers(1, 65535), st.integers(1, 65535), st.sampled_from(["tcp", "udp"])),
                 max_size=3, unique_by=lambda p: (p["protocol"], p["host"]))


@given(ports=ports, drain=seconds, monitor=seconds, stop=seconds, keep=st.integers(1, 100),
       memory=st.one_of(st.none(), st.integers(6 << 20, 1 << 40)),
       cpus=st.one_of(st.none(), st.floats(min_value=0.01, max_value=1024)),
       env=st.dictionaries(st.text("ABCXYZ_", min_size=1, max_size=5), st.text(max_size=5), max_size=3))
def test_any_valid_spec_round_trips(ports, drain, monitor, stop, keep, memory, cpus, env):
    js = deploy_spec(ports=ports, drain=drain, monitor=monitor, stop_timeout=stop, keep_releases=keep,
                     resources={"memory": memory, "pids": None, "cpus": cpus}, env=env)
    d = Deploy.from_json(js)
    assert d.to_json() == js
    assert Deploy.from_json(d.to_json()) == d


def test_init_is_on_by_default_and_only_written_when_off():
    assert Deploy.from_json({}).init is True and "init" not in Deploy().to_json()
    off = parse_deploy("web", dict(deploy_spec(), init=False))
    assert off.init is False and off.to_json()["init"] is False
    with pytest.raises(BadRequest, match="services/web/deploy/init: expected true or false"):
        parse_deploy("web", dict(deploy_spec(), init="no"))
