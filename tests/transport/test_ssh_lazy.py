"""paramiko is imported on first use only, and threads that race to that first use all get it."""
import subprocess
import sys

from tests.conftest import REPO

CODE = """
import sys, threading
from orchestrator.transport import ssh
assert "paramiko" not in sys.modules, "imported at start-up"
errors = []
def use():
    try:
        ssh.paramiko.SSHClient, ssh.paramiko.RejectPolicy, ssh.paramiko.SSHException
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=use) for _ in range(32)]
for t in threads: t.start()
for t in threads: t.join()
print(errors)
"""


def test_first_use_from_many_threads():
    p = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"
