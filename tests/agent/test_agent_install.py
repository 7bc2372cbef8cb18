import pytest

from orchestrator.agent.client import agent_path
from orchestrator.agent.install import render_unit

DIGEST = "sha256:" + "ab" * 32


def test_agent_file_is_named_by_its_digest():
    assert agent_path(DIGEST) == "/var/lib/orch/agent/" + "ab" * 32 + ".pyz"


@pytest.mark.parametrize("bad", ["sha256:xyz", "md5:" + "ab" * 16, "sha256:../../etc/passwd" + "a" * 40])
def test_a_digest_that_is_not_one_names_no_file(bad):
    with pytest.raises(ValueError):
        agent_path(bad)


def test_systemd_unit_restarts_the_agent_but_never_stops_containers_with_it():
    unit = render_unit(agent_path(DIGEST))
    assert f"ExecStart=/usr/bin/python3 {agent_path(DIGEST)} serve" in unit
    assert "KillMode=process" in unit and "Restart=always" in unit
