"""The build display of build/apply/plan/push: bars once a build runs long enough to watch, one
plain line (no rich import) for a quick build that built a layer, nothing for a build whose every
layer is cached."""
import subprocess
import sys

from tests.conftest import REPO

CODE = """
import sys, time
from types import SimpleNamespace
from orchestrator.commands.build import BuildProgress

def ev(step, state, label="step", seconds=0.0):
    return SimpleNamespace(service="web", platform="linux/amd64", step=step, total=3, label=label,
                           state=state, seconds=seconds)

script = {
    "cached": [ev(0, "start", "base debian"), ev(0, "cached", "base debian"), ev(1, "cached"),
               ev(2, "cached"), ev(3, "done", "image")],
    "built": [ev(0, "start", "base debian"), ev(0, "cached", "base debian"), ev(1, "cached"),
              ev(2, "start"), ev(2, "built", seconds=0.01), ev(3, "done", "image", 0.02)],
    "slow base": [ev(0, "start", "base debian"), "sleep", ev(0, "built", "base debian", 0.3),
                  ev(3, "done", "image", 0.3)],
    "slow start": [ev(0, "start", "base debian"), "sleep", "check", ev(0, "cached", "base debian"),
                   ev(3, "done", "image", 0.3)],
    "slow step": [ev(0, "start", "base debian"), ev(0, "cached", "base debian"), ev(1, "start"),
                  ev(1, "built", seconds=0.01), ev(2, "start"), "sleep", "check step",
                  ev(2, "built", seconds=0.3), ev(3, "done", "image", 0.3)],
    "failed": [ev(0, "start", "base debian"), ev(0, "cached", "base debian"), ev(1, "start"),
               ev(1, "built", seconds=0.01), "fail"],
    "warning": [ev(0, "start", "base debian"), ev(0, "warning", "no orch.lock: resolved from the mirror"),
                ev(0, "cached", "base debian"), ev(3, "done", "image")],
}[sys.argv[1]]
try:
    with BuildProgress(grace=0.05) as progress:
        for item in script:
            if item == "sleep":
                time.sleep(0.3)
            elif item == "fail":
                raise RuntimeError("the build failed")
            elif item == "check step":
                print("open while the step runs:", "rich" in sys.modules and progress.shown, flush=True)
            elif item == "check":
                print("open while the base runs:", "rich" in sys.modules and progress.shown, flush=True)
            else:
                progress(item)
except RuntimeError as exc:
    print(exc)
print("rich imported:", "rich" in sys.modules)
"""


def run_display(script):
    p = subprocess.run([sys.executable, "-c", CODE, script], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr
    return p.stdout, p.stderr


def test_a_cached_build_shows_nothing_and_does_not_import_rich():
    out, err = run_display("cached")
    assert (out, err) == ("rich imported: False\n", "")


def test_a_quick_build_that_builds_a_layer_prints_one_plain_line_without_rich():
    out, err = run_display("built")
    assert out == "rich imported: False\n"
    assert err == "web linux/amd64: 1 layer built, done in 0.0s\n"


def test_a_slow_step_opens_the_bars_and_replays_what_came_before():
    out, err = run_display("slow step")
    assert "open while the step runs: True" in out
    assert "web linux/amd64" in err and "done in 0.3s" in err


def test_a_slow_base_opens_the_display_before_it_ends():
    out, err = run_display("slow start")
    assert "open while the base runs: True" in out
    assert "web linux/amd64" in err and "done in 0.3s" in err


def test_a_base_that_takes_long_to_build_is_shown():
    out, err = run_display("slow base")
    assert "web linux/amd64" in err and "done in 0.3s" in err


def test_a_warning_is_printed():
    out, err = run_display("warning")
    assert "web linux/amd64: no orch.lock: resolved from the mirror" in err


def test_a_failed_build_prints_no_summary_line():
    out, err = run_display("failed")
    assert out == "the build failed\nrich imported: False\n" and err == ""
