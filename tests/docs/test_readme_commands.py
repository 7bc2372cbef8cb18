"""Executable documentation: the README's tour and every example's header comment, run as written.

The commands (see ``doccommands`` for how they are found and what a trailing comment promises) run
in order, in one shell environment (an ``export`` carries on), from a copy of the repository's
README, manifests/ and examples/, with ``.venv/bin`` first on PATH. The labs they make are their own:
``ORCH_LAB_PREFIX`` puts a unique prefix in front of every lab name (``orch lab up`` makes
``dXXXX-lab``, the canary example ``dXXXX-canary``), ``ORCH_HOME`` is a store kept for these tests,
and every lab with the prefix is removed at the end. A line marked ``# not on the lab`` is checked
for syntax only. Run it alone with ``pytest -s tests/docs/test_readme_commands.py`` to see each
command's time.
"""
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.lab.machine import LabMachine, known_labs, load_layout
from tests.docs.doccommands import REPO, all_commands, check_syntax, judge

COMMAND_TIMEOUT = 600


@pytest.fixture(scope="module")
def docs_lab(tmp_path_factory):
    """Where the documented commands run: a copy of the docs, an environment of their own, and the
    labs they make (all named with one unique prefix), removed afterwards."""
    if os.geteuid() != 0:
        pytest.fail("the documentation test needs root (it makes labs)")
    prefix = f"d{secrets.token_hex(2)}-"
    work = tmp_path_factory.mktemp("docs")
    shutil.copy(REPO / "README.md", work / "README.md")
    for d in ("manifests", "examples"):
        shutil.copytree(REPO / d, work / d)
    cache = Path(os.environ.get("ORCH_TEST_CACHE", Path.home() / ".cache" / "orch-test"))
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(Path.home()),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "ORCH_HOME": str(cache / "docs-home"),
        "ORCH_LAB_PREFIX": prefix,
    }
    try:
        yield {"work": work, "env": env, "prefix": prefix}
    finally:
        for name in known_labs():
            if name.startswith(prefix):
                LabMachine(load_layout(name)).down()


def run_as_written(line: str, cwd: Path, env: dict, envfile: Path):
    """Run one documented line in bash; returns (exit code, stdout, stderr, environment after it)."""
    script = f"{line}\n__doc_rc=$?\nenv -0 > {envfile}\nexit $__doc_rc\n"
    proc = subprocess.run(["bash", "-c", script], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    after = env
    if envfile.exists():
        after = dict(item.split("=", 1) for item in envfile.read_text().split("\0") if "=" in item)
        envfile.unlink()
    return proc.returncode, proc.stdout, proc.stderr, after


def test_the_documented_commands_run_as_written(docs_lab):
    work, env = docs_lab["work"], dict(docs_lab["env"])
    envfile = work / ".doc-env"
    timings = []
    started = time.monotonic()
    for cmd in all_commands(work):
        t0 = time.monotonic()
        if cmd.syntax_only:
            problem = check_syntax(cmd, work, env)
            assert problem is None, f"{cmd}\n  syntax: {problem}"
        else:
            code, out, err, env = run_as_written(cmd.line, work, env, envfile)
            problems = judge(cmd, code, out + err)          # what the terminal shows
            assert not problems, (f"{cmd}\n  " + "; ".join(problems)
                                  + f"\n  stdout: {out[-1500:]}\n  stderr: {err[-1500:]}")
        timings.append(time.monotonic() - t0)
        print(f"  {timings[-1]:6.1f} s  {cmd}", flush=True)       # shown with pytest -s
    print(f"{len(timings)} documented commands in {time.monotonic() - started:.1f} s")
