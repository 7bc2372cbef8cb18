"""`orch lab ssh HOST ...` behaves like `ssh`: the words after the host are one remote command line."""
import os
import subprocess
import sys

import pytest

from tests.conftest import own_lab


@pytest.fixture(scope="module")
def ssh_lab():
    with own_lab("ssh", amd64=1, arm64=0) as the_lab:
        yield the_lab


def orch_ssh(lab, *words, input=None):
    env = dict(os.environ)
    env.pop("ORCH_LAB_PREFIX", None)
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "lab", "ssh", "--name", lab.name,
                           "amd64-1", *words], input=input, capture_output=True, text=True, timeout=30,
                          env=env)


@pytest.mark.parametrize("words, out", [
    (["echo a; echo b"], "a\nb\n"),                         # one word: a shell line, run by the host's shell
    (["echo", "a;", "echo", "b"], "a\nb\n"),                # several words: joined with spaces, as ssh does
    (["cat /etc/orch/platform && echo $((6*7))"], "linux/amd64\n42\n"),
    (["echo", "'a   b'", "$((1+1))"], "a   b 2\n"),             # quoting is the remote shell's, as with ssh
])
def test_the_rest_of_the_line_is_one_remote_command_line(ssh_lab, words, out):
    proc = orch_ssh(ssh_lab, *words)
    assert (proc.returncode, proc.stdout) == (0, out), proc.stderr


def test_the_remote_exit_code_comes_back(ssh_lab):
    assert orch_ssh(ssh_lab, "exit 7").returncode == 7


def test_without_a_command_it_is_a_login_shell(ssh_lab):
    proc = orch_ssh(ssh_lab, input='echo "shell=$0"; shopt -q login_shell && echo login\n')
    assert proc.returncode == 0, proc.stderr
    assert "login" in proc.stdout.split() and "shell=-" in proc.stdout
