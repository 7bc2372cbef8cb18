"""Executable documentation: the README's tour and every example's header comment, run as written.

The commands (see ``doccommands`` for how they are found and what a trailing comment promises) run
in order, document by document, one shell environment per document (an ``export`` carries on), in
a copy of the repository's README, manifests/ and examples/, with ``.venv/bin`` first on PATH.
The labs they make are their own: ``ORCH_LAB_PREFIX`` puts a unique prefix in front of every lab
name (``orch lab up`` makes ``dXXXX-lab``, the canary example ``dXXXX-canary``), ``ORCH_HOME`` is a
store kept for these tests (one per document, warm from the last run), and every lab with the
prefix is removed at the end. A line marked ``# not on the lab`` is checked for syntax only.
``pytest -s tests/docs/test_readme_commands.py`` shows each command's time.
"""
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from orchestrator.lab.machine import LabMachine, known_labs, load_layout
from tests.docs.doccommands import REPO, all_commands, check_syntax, judge

COMMAND_TIMEOUT = 1800     # a cold build of an example through qemu takes minutes on a busy machine


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
    proc = subprocess.Popen(["bash", "-c", script], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)          # the command and everything it started
        out, err = proc.communicate()
        return -1, out, err + f"\n(timed out after {COMMAND_TIMEOUT} s)", env
    after = env
    if envfile.exists():
        after = dict(item.split("=", 1) for item in envfile.read_text().split("\0") if "=" in item)
        envfile.unlink()
    return proc.returncode, out, err, after


def run_document(commands, work: Path, env: dict, envfile: Path):
    """One document's commands in order; returns (timings, the first broken promise or None)."""
    timings = []
    for cmd in commands:
        t0 = time.monotonic()
        if cmd.syntax_only:
            problem = check_syntax(cmd, work, env)
            failure = f"{cmd}\n  syntax: {problem}" if problem else None
        else:
            code, out, err, env = run_as_written(cmd.line, work, env, envfile)
            problems = judge(cmd, code, out + err)          # what the terminal shows
            failure = (f"{cmd}\n  " + "; ".join(problems) + f"\n  stdout: {out[-1500:]}\n  stderr: {err[-1500:]}"
                       if problems else None)
        timings.append((time.monotonic() - t0, str(cmd)))
        if failure:
            return timings, failure
    return timings, None


def test_the_documented_commands_run_as_written(docs_lab):
    """Each document in order. The README's lab section runs first and alone (its `orch lab down`
    unregisters binfmt entries that no recorded lab uses); then the tour and the examples run side
    by side, each on its own labs with its own store, since they share nothing but the machine."""
    work = docs_lab["work"]
    groups = {}
    for cmd in all_commands(work):
        groups.setdefault(cmd.group, []).append(cmd)
    names = list(groups)

    def one(index: int):
        env = dict(docs_lab["env"], ORCH_HOME=os.path.join(docs_lab["env"]["ORCH_HOME"], f"doc{index}"))
        return run_document(groups[names[index]], work, env, work / f".doc-env-{index}")

    started = time.monotonic()
    results = {names[0]: one(0)}
    if results[names[0]][1] is None:
        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            results.update(zip(names[1:], pool.map(one, range(1, len(names)))))
    for name in names:
        if name in results:
            print(f"\n{name}: {sum(t for t, _ in results[name][0]):.1f} s")
            for seconds, what in results[name][0]:
                print(f"  {seconds:6.1f} s  {what}")
    print(f"{sum(len(g) for g in groups.values())} documented commands in {time.monotonic() - started:.1f} s")
    failures = [f for _, f in results.values() if f]
    assert not failures, "\n\n".join(failures)
