"""Loading hostile manifest directories in one child with bounded memory and time.

A regression (a bomb that is no longer refused early) then fails the tests with a timeout or a
MemoryError instead of exhausting the machine the tests share. One child loads every case of a
module (one interpreter start, not one per case).
"""
import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Dict, Mapping

import pytest

REPO = Path(__file__).resolve().parents[2]
CHILD_MEMORY = 768 << 20    # the child is refused more than this much address space
CHILD_DEADLINE = 60.0       # seconds for all cases; a bomb that is not refused early blows through

_CHILD = """
import json, sys, traceback
from orchestrator.errors import ManifestError
from orchestrator.manifest import load_desired
for name, directory in json.load(sys.stdin).items():
    try:
        load_desired(directory, {})
        answer = {"ok": True}
    except ManifestError as exc:
        answer = {"error": str(exc), "line": exc.line}
    except BaseException:
        answer = {"crash": traceback.format_exc()[-3000:]}
    print(json.dumps([name, answer]), flush=True)
"""


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))


def load_bounded(cases: Mapping[str, Path]) -> Dict[str, dict]:
    """load_desired of each directory in a child with bounded memory and time:
    name -> {"ok": True} | {"error", "line"} | {"crash": traceback}."""
    try:
        proc = subprocess.run([sys.executable, "-c", _CHILD], input=json.dumps({k: str(v) for k, v in cases.items()}),
                              cwd=str(REPO), capture_output=True, text=True, timeout=CHILD_DEADLINE,
                              preexec_fn=_limit_memory, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    except subprocess.TimeoutExpired as exc:
        done = (exc.stdout or b"").decode(errors="replace").count("\n")
        pytest.fail(f"not refused within {CHILD_DEADLINE}s (stuck after {done} cases)")
    answers = dict(json.loads(line) for line in proc.stdout.splitlines())
    for name in cases:
        answers.setdefault(name, {"crash": f"child died (exit {proc.returncode}): {proc.stderr[-3000:]}"})
    return answers


def check_refused(answer: dict) -> dict:
    assert "crash" not in answer, f"crashed instead of a located error:\n{answer['crash']}"
    assert "error" in answer, "loaded without an error"
    return answer
