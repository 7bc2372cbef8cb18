"""A host that was unreachable while a release went out is shown by `orch status` as pending it."""
import json
import os
import secrets
import shutil
import subprocess
import sys

from orchestrator.lab import faults
from orchestrator.lab.layout import LabLayout, LabSpec
from orchestrator.lab.machine import LabMachine
from tests.conftest import REPO


def orch(argv, env):
    return subprocess.run([sys.executable, "-m", "orchestrator.cli"] + argv, env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def test_status_shows_the_host_that_missed_a_release_as_pending(tmp_path, lab_root):
    name = f"test-lag-{secrets.token_hex(2)}"
    directory = tmp_path / "manifests"
    shutil.copytree(REPO / "manifests", directory)
    (directory / "fleet.yaml").write_text(f"kind: Fleet\nname: {name}\nlab: {{hosts: 2, arm64: 0}}\n")
    env = dict(os.environ, ORCH_HOME=str(tmp_path / "home"))
    layout = LabLayout(LabSpec(name, amd64=2, arm64=0))
    try:
        first = orch(["apply", str(directory)], env)
        assert first.returncode == 0, first.stdout + first.stderr
        # its link cut (apply would switch a lab host that is off back on)
        faults.run_link(layout.host("amd64-2"), "down")
        try:
            second = orch(["apply", str(directory), "--var", "greeting=a newer page"], env)
        finally:
            faults.run_link(layout.host("amd64-2"), "up")
        assert second.returncode != 0 and "amd64-2" in second.stdout + second.stderr
        st = orch(["status", str(directory), "--json"], env)
        rows = {r["host"]: r for r in json.loads(st.stdout)}
        new, old = rows["amd64-1"], rows["amd64-2"]
        assert new["release"] != old["release"] and new["pending"] is None
        assert old["pending"] == {"release": new["release"], "since": new["since"]}
        text = orch(["status", str(directory)], env).stdout
        assert f"PENDING {new['release']} since" in text.splitlines()[2]
        third = orch(["apply", str(directory), "--var", "greeting=a newer page"], env)
        assert third.returncode == 0, third.stdout + third.stderr
        rows = {r["host"]: r for r in json.loads(orch(["status", str(directory), "--json"], env).stdout)}
        assert rows["amd64-2"]["release"] == new["release"] and rows["amd64-2"]["pending"] is None
    finally:
        LabMachine(layout).down()
