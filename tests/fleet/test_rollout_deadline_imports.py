"""A host's deadline is worked out from the deploy spec without importing the agent's planner
(``runtime.reconcile`` and ``runtime.planner``: ~28 ms of every ``orch apply`` start)."""
import subprocess
import sys

from tests.conftest import REPO

CODE = """
import sys
from orchestrator.fleet.rollout import apply_deadline
from runtime.spec import MIN_SETTLE
d = apply_deadline({"health": {"kind": "none"}, "stop_timeout": 5})
print(d, MIN_SETTLE, "runtime.reconcile" in sys.modules, "runtime.planner" in sys.modules)
"""


def test_the_deadline_counts_the_settle_window_without_importing_the_planner():
    p = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr
    deadline, settle, reconcile, planner = p.stdout.split()
    assert float(settle) == 3.0
    assert float(deadline) >= 60.0 + 5 + float(settle)
    assert (reconcile, planner) == ("False", "False")
