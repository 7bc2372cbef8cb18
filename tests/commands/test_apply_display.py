"""What `orch apply` shows while it rolls out: plain lines unless a transfer is worth bars."""
import argparse
import io
import subprocess
import sys

from orchestrator.commands import apply as apply_cmd


def test_a_small_change_or_no_terminal_prints_plain_lines_without_importing_rich():
    code = (
        "import argparse, sys\n"
        "from orchestrator.commands import apply\n"
        "with apply._display(argparse.Namespace(json=False), {'h1': 2048}) as (on_bytes, on_event):\n"
        "    assert on_bytes is None\n"
        "    on_event('h1: hello ok r-1 [canary]')\n"
        "print('rich' in sys.modules)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"
    assert res.stderr == "h1: hello ok r-1 [canary]\n"        # verbatim: no markup eaten


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_large_transfer_on_a_terminal_gets_bars_and_lines_through_them(monkeypatch):
    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    with apply_cmd._display(argparse.Namespace(json=False), {"h1": apply_cmd.PROGRESS_FROM}) as (on_bytes, on_event):
        assert callable(on_bytes)
        on_bytes("h1", 1000)
        on_event("h1: hello ok r-1 [canary]")
    assert "h1: hello ok r-1 [canary]" in err.getvalue()


def test_json_output_gets_neither():
    with apply_cmd._display(argparse.Namespace(json=True), {"h1": 10 << 20}) as (on_bytes, on_event):
        assert on_bytes is None and on_event is None
