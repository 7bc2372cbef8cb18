"""Reads are reads, on a real lab host: `orch plan`, `status`, `hosts`, `audit`, `logs` leave a
host that has no agent without one; a host running a newer agent is refused, and replaced only
with --allow-downgrade."""
import io
import json
import os
import secrets
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from runtime import protocol

REPO = Path(__file__).resolve().parents[2]
LAB = f"reads-{secrets.token_hex(2)}"


@pytest.fixture(scope="module")
def reads_lab(tmp_path_factory):
    """A one-host lab (made by the first orch command) and a scratch service aimed at it."""
    from orchestrator.lab.layout import LabLayout, LabSpec
    from orchestrator.lab.machine import LabMachine

    d = tmp_path_factory.mktemp("reads") / "manifests"
    (d / "files").mkdir(parents=True)
    (d / "files" / "hello.txt").write_text("hello\n")
    (d / "fleet.yaml").write_text(f"kind: Fleet\nname: {LAB}\nlab: {{hosts: 1, arm64: 0}}\n")
    (d / "probe.yaml").write_text("kind: Service\nname: probe\nimage:\n  from: scratch\n"
                                  "  platforms: [linux/amd64]\n"
                                  "  steps: [{copy: {src: files/hello.txt, dest: /hello.txt}}]\n"
                                  "  cmd: [/hello]\n")
    env = dict(os.environ, ORCH_HOME=str(tmp_path_factory.mktemp("orch-home")), PYTHONPATH=str(REPO))
    try:
        yield d, env
    finally:
        LabMachine(LabLayout(LabSpec(LAB))).down()


def orch(env, *args):
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=600)


def host_files(lab_name):
    """Everything orch could have left on the lab host (its agent dir, state, run dir)."""
    from orchestrator.lab.fleet import lab_hosts
    from orchestrator.lab.layout import LabLayout, LabSpec
    from orchestrator.transport.ssh import ConnectionPool

    hosts = lab_hosts(LabLayout(LabSpec(lab_name)))
    with ConnectionPool(h.target for h in hosts) as pool:
        res = pool.get(hosts[0].name).run(["find", "/var/lib/orch", "/run/orch", "-mindepth", "1"],
                                          timeout=30)
        return sorted(res.stdout.decode().split()), pool.get(hosts[0].name), hosts[0]


def test_reads_leave_a_host_without_an_agent_as_it_was(reads_lab):
    d, env = reads_lab
    plan = orch(env, "plan", str(d), "--json")
    assert plan.returncode == 0, plan.stderr
    (host,) = json.loads(plan.stdout)["hosts"]
    assert host["agent"].startswith("install the agent orch-agent-") and host["error"] is None
    assert [c["service"] for c in host["changes"]] == ["probe"]
    assert host_files(LAB)[0] == []                          # no agent, no state, no serve

    status = orch(env, "status", str(d), "--json")
    assert json.loads(status.stdout) == [{"host": "amd64-1", "error": "agent not installed"}]
    hosts = json.loads(orch(env, "hosts", str(d), "--json").stdout)
    assert [(h["reachable"], h["agent_installed"], h["platform"]) for h in hosts] == [
        (True, False, "linux/amd64")]
    orch(env, "audit", str(d), "--json")
    orch(env, "logs", "probe", str(d))
    assert host_files(LAB)[0] == []
    text = orch(env, "plan", str(d))
    assert "apply would install the agent orch-agent-" in text.stdout


def _newer_agent(pyz: Path, out: Path) -> Path:
    """The same agent, claiming protocol 99: what a newer orch would have installed."""
    data = pyz.read_bytes()
    shebang, body = data.split(b"\n", 1)
    src, dst = zipfile.ZipFile(io.BytesIO(body)), io.BytesIO()
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zf:
        for info in src.infolist():
            content = src.read(info)
            if info.filename == "runtime/protocol.py":
                content = content.replace(b"\nPROTOCOL_VERSION = ", b"\nPROTOCOL_VERSION = 99  # ")
            zf.writestr(info, content)
    out.write_bytes(shebang + b"\n" + dst.getvalue())
    return out


def test_a_newer_agent_is_refused_and_replaced_only_on_purpose(reads_lab, tmp_path):
    import hashlib

    from orchestrator.fleet.deploy import agent_bundle, observe, prepare
    from orchestrator.image.store import Store
    from orchestrator.transport.ssh import ConnectionPool

    d, env = reads_lab
    old_home = os.environ.get("ORCH_HOME")
    os.environ["ORCH_HOME"] = env["ORCH_HOME"]
    try:
        pyz, ours = agent_bundle(Store.default().ensure())
        newer = _newer_agent(Path(pyz), tmp_path / "newer.pyz")
        _, conn, lab_host = host_files(LAB)
        from orchestrator.lab.fleet import lab_hosts
        from orchestrator.lab.layout import LabLayout, LabSpec
        target = lab_hosts(LabLayout(LabSpec(LAB)))[0].target
        with ConnectionPool([target]) as pool:
            c = pool.get(lab_host.name)
            assert c.run(["mkdir", "-p", "/var/lib/orch/agent"], timeout=30).exit_code == 0
            c.put_file(str(newer), "/var/lib/orch/agent/" + hashlib.sha256(newer.read_bytes()).hexdigest() + ".pyz", 0o644)

        plan = orch(env, "plan", str(d), "--json")
        (host,) = json.loads(plan.stdout)["hosts"]
        assert plan.returncode == 1
        assert (f"runs a newer agent (protocol 99, state schema 2) than this orch "
                f"(protocol {protocol.PROTOCOL_VERSION}") in host["error"]
        status = orch(env, "status", str(d))
        assert status.returncode == 1 and "runs a newer agent (protocol 99" in status.stdout

        prep = prepare(str(d), {})
        with ConnectionPool(h.target for h in prep.hosts) as pool:
            refused = observe(prep, pool)                              # what apply does first
            assert "newer agent" in refused.facts["amd64-1"].error
            assert not pool.get("amd64-1").run(["test", "-e", "/var/lib/orch/agent/" + ours.split(":")[1] + ".pyz"],
                                               timeout=30).exit_code == 0
            allowed = observe(prep, pool, allow_downgrade=True)       # apply --allow-downgrade
            assert allowed.facts["amd64-1"].error is None
            info = allowed.clients["amd64-1"].info()
            assert info["agent_digest"] == ours and info["protocol"] == protocol.PROTOCOL_VERSION and info["serve_pid"]
    finally:
        if old_home is None:
            os.environ.pop("ORCH_HOME", None)
        else:
            os.environ["ORCH_HOME"] = old_home
