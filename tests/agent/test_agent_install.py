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


def test_the_launcher_runs_the_agent_or_says_it_is_missing(tmp_path):
    """A missing agent is told by the launcher's own exit code and facts, in the same round
    trip, never by matching Python's error text; a present one runs as `python3 AGENT VERB`."""
    import json
    import subprocess
    import sys

    from orchestrator.agent.bundle import build_agent_pyz
    from orchestrator.agent.client import LAUNCH
    from runtime import protocol

    assert "\0" not in LAUNCH                       # an exec request cannot carry a NUL
    (tmp_path / "agents").mkdir()
    (tmp_path / "agents" / "old.pyz").write_bytes(b"")
    res = subprocess.run([sys.executable, "-c", LAUNCH, str(tmp_path / "agents" / "gone.pyz"), "info"],
                         capture_output=True, timeout=60)
    assert res.returncode == protocol.EXIT_NO_AGENT
    err = json.loads(res.stdout)["error"]
    assert err["code"] == protocol.E_NO_AGENT and err["python"][:2] == list(sys.version_info[:2])
    assert [a for a, _ in err["agents"]] == [str(tmp_path / "agents" / "old.pyz")]

    pyz, digest = build_agent_pyz(tmp_path / "out")
    res = subprocess.run([sys.executable, "-c", LAUNCH, str(pyz), "--root", str(tmp_path / "root"),
                          "--run", str(tmp_path / "run"), "info"], capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["agent_digest"] == digest and info["protocol"] == protocol.PROTOCOL_VERSION


@pytest.mark.parametrize("theirs,refused", [
    ({"protocol": 3, "state_schema": 2}, False),
    ({"protocol": 2, "state_schema": 2}, False),               # older: apply upgrades it
    ({"protocol": 1}, False),
    ({"protocol": 4, "state_schema": 2}, True),
    ({"protocol": 3, "state_schema": 3}, True),
])
def test_a_newer_agent_is_refused_unless_on_purpose(theirs, refused):
    from orchestrator.agent.client import check_versions
    from orchestrator.errors import AgentVersionError

    if refused:
        with pytest.raises(AgentVersionError, match="runs a newer agent"):
            check_versions("pi", theirs)
    else:
        check_versions("pi", theirs)
    check_versions("pi", theirs, allow_newer=True)
