"""The `observe` verb: info, have and status in one answer (what `orch plan/apply` asks each host)."""
import json
import subprocess
import sys

from orchestrator.agent.bundle import build_agent_pyz

DIGEST = "sha256:" + "0" * 64


def test_observe_answers_info_have_and_status_at_once(tmp_path):
    pyz, digest = build_agent_pyz(str(tmp_path / "agent"))
    res = subprocess.run([sys.executable, str(pyz), "--root", str(tmp_path / "root"), "--run", str(tmp_path / "run"),
                          "observe"], input=json.dumps({"digests": [DIGEST]}), capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    body = json.loads(res.stdout)
    assert body["info"]["agent_digest"] == digest and body["info"]["runtime_version"] is None
    assert body["info"]["serve_agent"] is None
    assert body["have"] == {"present": [], "partial": {}}
    assert body["status"]["services"] == {}
