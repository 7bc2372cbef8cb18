"""Connections that outlive a command, on a real lab host: a second `orch apply` right after
the first costs sshd no new handshake; ORCH_SSH_PERSIST=0 turns that off; host keys are still
checked strictly for every new connection."""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time

import pytest

from orchestrator.errors import TransportError
from orchestrator.lab.layout import LabLayout, LabSpec
from orchestrator.lab.machine import LabMachine
from orchestrator.transport.ssh import SSHConnection, SSHTarget, control_options
from tests.conftest import REPO

LAB = f"test-persist-{secrets.token_hex(2)}"


@pytest.fixture(scope="module")
def persist_lab(tmp_path_factory):
    directory = tmp_path_factory.mktemp("project") / "manifests"
    shutil.copytree(REPO / "manifests", directory)
    (directory / "fleet.yaml").write_text(f"kind: Fleet\nname: {LAB}\nlab: {{hosts: 1, arm64: 0}}\n")
    text = (directory / "hello.yaml").read_text().replace("platforms: [linux/amd64, linux/arm64]",
                                                          "platforms: [linux/amd64]")
    (directory / "hello.yaml").write_text(text)
    env = dict(os.environ, ORCH_HOME=str(tmp_path_factory.mktemp("home")), PYTHONPATH=str(REPO))
    layout = LabLayout(LabSpec(LAB, 1, 0))
    try:
        yield directory, env, layout
    finally:
        LabMachine(layout).down()


def handshakes(layout) -> int:
    log = layout.hosts()[0].log_file
    return log.read_text(errors="replace").count("Accepted publickey") if log.exists() else 0


def apply(directory, env):
    p = subprocess.run([sys.executable, "-m", "orchestrator.cli", "apply", str(directory)], env=env,
                       capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def test_a_second_command_costs_no_handshake(persist_lab):
    directory, env, layout = persist_lab
    apply(directory, env)                                  # brings the lab up, deploys
    before = handshakes(layout)
    assert "up to date" in apply(directory, env)
    assert handshakes(layout) == before


def test_persistence_can_be_turned_off(persist_lab):
    directory, env, layout = persist_lab
    before = handshakes(layout)
    assert "up to date" in apply(directory, dict(env, ORCH_SSH_PERSIST="0"))
    assert handshakes(layout) > before


def test_a_changed_host_key_is_refused_even_while_a_connection_persists(persist_lab, tmp_path):
    directory, env, layout = persist_lab
    host = layout.hosts()[0]
    wrong = tmp_path / "known_hosts"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    wrong.write_text(f"{host.address} {(tmp_path / 'k.pub').read_text().split()[0]} "
                     f"{(tmp_path / 'k.pub').read_text().split()[1]}\n")
    target = SSHTarget(name=host.name, address=host.address, key_path=str(layout.user_key),
                       known_hosts=str(wrong))
    assert control_options(target)                         # persistence is on ...
    with pytest.raises(TransportError, match="Host key verification failed"):
        SSHConnection(target).stream_to(["true"], [])     # ... and still a new, checked connection


def _door_conn(layout):
    from orchestrator.lab.fleet import lab_hosts
    return SSHConnection(lab_hosts(layout)[0].target)


def _serve_facts(conn):
    """info of the host's agent, from the snapshot serve answers at its door (no process)."""
    from runtime import door, snapshot
    out = conn.read_door(door.request("snapshot"))
    seen = snapshot.parse_read(out) if out else None
    assert seen is not None, f"no fresh snapshot at the door: {out!r}"
    return seen["info"]


def test_a_later_command_reads_the_host_and_opens_its_session_at_serves_door(persist_lab):
    """The master forwards serve's door: a session is a fork of serve (no Python started)."""
    from orchestrator.agent.session import AgentSession
    directory, env, layout = persist_lab
    assert "up to date" in apply(directory, env)          # the master now forwards the door
    conn = _door_conn(layout)
    info = _serve_facts(conn)
    session = AgentSession.open(conn, info["serve_agent"])
    try:
        assert session.process.pid, "the session was not opened at the door"
        stat = conn.run_shared(["cat", f"/proc/{session.process.pid}/stat"]).stdout.decode()
        assert int(stat.rsplit(")", 1)[1].split()[1]) == info["serve_pid"]     # its parent is serve
        code, body = session.call("observe", {"digests": []})
        assert code == 0 and body["info"]["agent_digest"] == info["agent_digest"]
    finally:
        session.close()


def test_with_serve_killed_a_change_still_rolls_out_and_serve_comes_back_with_its_door(persist_lab):
    directory, env, layout = persist_lab
    conn = _door_conn(layout)
    pid = _serve_facts(conn)["serve_pid"]
    assert conn.run_shared(["kill", "-9", str(pid)]).ok
    with open(directory / "hello" / "www" / "style.css", "a") as f:
        f.write("\n/* with serve killed */\n")
    out = apply(directory, env)
    assert "done in" in out and "FAILED" not in out, out
    deadline = time.monotonic() + 10
    while True:                                            # a fresh snapshot, from a new serve
        try:
            info = _serve_facts(conn)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert info["serve_pid"] != pid
