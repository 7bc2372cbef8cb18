"""Shipping imports its retry machinery (tenacity, ~15 ms of every apply's start) only once an
attempt has failed; the retries keep their backoff."""
import subprocess
import sys

from tests.conftest import REPO

CODE = """
import sys, time
from orchestrator.errors import TransportError
from orchestrator.transport import shipper
calls = []
def flaky(fails):
    def attempt():
        calls.append(time.monotonic())
        if len(calls) <= fails:
            raise TransportError("link dropped")
    return attempt
shipper.with_retries(flaky(0), attempts=4, max_wait=5.0)
print("tenacity" in sys.modules)
calls.clear()
shipper.with_retries(flaky(2), attempts=4, max_wait=5.0)
gaps = [round(b - a, 1) for a, b in zip(calls, calls[1:])]
print(len(calls), gaps, "tenacity" in sys.modules)
calls.clear()
try:
    shipper.with_retries(flaky(9), attempts=3, max_wait=5.0)
except TransportError as exc:
    print("gave up", len(calls), exc)
"""


def test_a_first_attempt_that_works_needs_no_retry_machinery_and_retries_back_off():
    p = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr
    first, retried, gave_up = p.stdout.splitlines()
    assert first == "False"
    assert retried == "3 [0.2, 0.4] True"          # waits 0.2 then 0.4 s, as tenacity's backoff
    assert gave_up == "gave up 3 link dropped"
