"""Observe without starting Python, on a real lab host: after a deploy, serve keeps the observe
answer in /run/orch/observe.json; apply's first look reads it (no agent process, no session);
a change opens its session at its first verb (the lock); a changing verb removes the snapshot
before anything changes."""
from __future__ import annotations

import os
import secrets
import shutil
import time

import pytest

from orchestrator.agent.client import agent_path
from orchestrator.agent.install import install_and_observe, read_snapshot
from orchestrator.fleet.deploy import apply, observe, prepare
from orchestrator.transport.ssh import ConnectionPool
from tests.conftest import REPO

LAB = f"test-snap-{secrets.token_hex(2)}"


@pytest.fixture(scope="module")
def snap_lab(tmp_path_factory):
    from orchestrator.lab.layout import LabLayout, LabSpec
    from orchestrator.lab.machine import LabMachine

    old = os.environ.get("ORCH_HOME")
    os.environ["ORCH_HOME"] = str(tmp_path_factory.mktemp("home"))
    directory = tmp_path_factory.mktemp("project") / "manifests"
    shutil.copytree(REPO / "manifests", directory)
    (directory / "fleet.yaml").write_text(f"kind: Fleet\nname: {LAB}\nlab: {{hosts: 1, arm64: 0}}\n")
    text = (directory / "hello.yaml").read_text().replace("platforms: [linux/amd64, linux/arm64]",
                                                          "platforms: [linux/amd64]")
    (directory / "hello.yaml").write_text(text)
    try:                  # the lab comes down even when the first deploy fails
        prep = prepare(str(directory), {})
        with ConnectionPool(h.target for h in prep.hosts) as pool:
            report = apply(prep, observe(prep, pool), pool)
            assert report.ok, [o.error for o in report.rollout.outcomes]
        yield prep
    finally:
        LabMachine(LabLayout(LabSpec(LAB, 1, 0))).down()
        if old is None:
            os.environ.pop("ORCH_HOME", None)
        else:
            os.environ["ORCH_HOME"] = old


def wait_snapshot(conn, prep, digests):
    end = time.monotonic() + 15
    while time.monotonic() < end:
        seen = read_snapshot(conn, agent_path(prep.agent_digest), prep.agent_digest, digests)
        if seen is not None:
            return seen
        time.sleep(0.2)
    raise AssertionError("serve wrote no observe snapshot")


def test_a_first_look_reads_the_snapshot_and_a_change_opens_a_session_at_its_lock(snap_lab):
    prep = snap_lab
    rel = prep.releases[0]
    digests = [d for m in rel.manifests.values() for d, _ in prep.store.blobs_for(m)]
    with ConnectionPool(h.target for h in prep.hosts) as pool:
        conn = pool.get(prep.hosts[0].name)
        seen = wait_snapshot(conn, prep, digests)
        assert seen["status"]["services"]["hello"]["release"] == rel.release
        assert sorted(seen["have"]["present"]) == sorted(digests)
        client, body = install_and_observe(conn, prep.agent_pyz, prep.agent_digest, digests,
                                           releases={"hello": rel.release})
        assert client.session is None and body["status"]["services"]["hello"]["state"] == "running"
        from runtime import door
        at_door = conn.read_door(door.request("snapshot")) is not None
        client, body = install_and_observe(conn, prep.agent_pyz, prep.agent_digest, digests,
                                           releases={"hello": "r-0000000000000000"})
        # a change: read at serve's door (serve runs; the plan is made again under the lock),
        # else through the agent, in its session
        assert (client.session is None) == at_door
        # a change is planned from the snapshot too (and again under the lock): the session
        # opens at the first verb, a fork of serve through its door
        client.lock("test", 60, token="test-token")
        assert client.session is not None and not client.session.closed
        # a changing verb removes the snapshot under the converge lock, before it changes anything
        client.call("gc", {"lock": "test-token"})
        res = conn.run_shared(["test", "-e", "/run/orch/observe.json"])
        assert res.exit_code != 0
        client.unlock("test-token")
        assert wait_snapshot(conn, prep, digests)["status"]["services"]["hello"]["release"] == rel.release
