"""The agent's own checks on a deploy spec: nothing may name a path outside its root."""
import pytest

from runtime.errors import BadRequest
from runtime.spec import check_deploy
from tests.runtime.imagekit import deploy_spec


def test_the_test_spec_is_valid():
    check_deploy("web", deploy_spec())


@pytest.mark.parametrize("change,where", [
    ({"volumes": [{"name": "../../etc", "dest": "/data"}]}, "volumes/0/name"),
    ({"volumes": [{"name": "data", "dest": "relative"}]}, "volumes/0/dest"),
    ({"secrets": [{"name": "a/b", "dest": "/run/secrets/x"}]}, "secrets/0/name"),
    ({"secrets": [{"name": "pw", "dest": "/run/../etc/shadow"}]}, "secrets/0/dest"),
    ({"ports": [{"host": 0, "container": 80}]}, "ports/0/host"),
    ({"ports": [{"host": 80, "container": 80, "protocol": "sctp"}]}, "ports/0/protocol"),
    ({"health": {"kind": "grpc"}}, "health/kind"),
    ({"health": {"kind": "exec", "command": []}}, "health/command"),
    ({"drain": -1}, "drain"),
    ({"env": {"A=B": "x"}}, "env"),
])
def test_bad_specs_are_refused_with_their_path(change, where):
    with pytest.raises(BadRequest, match=f"services/web/deploy/{where}"):
        check_deploy("web", deploy_spec(**change))
