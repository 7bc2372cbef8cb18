"""The process's nftables context (runtime/nftlib.py)."""
import os

import pytest

from runtime import nftlib


def test_a_forked_child_opens_its_own_context():
    """serve forks agent sessions: a child that used its parent's netlink socket would read
    the answers to the parent's requests (and the parent the child's)."""
    ctx = nftlib.context()
    if ctx is None:
        pytest.skip("no libnftables here")
    assert nftlib.context() is ctx                  # one per process
    pid = os.fork()
    if pid == 0:
        mine = nftlib.context()
        os._exit(0 if mine is not None and mine is not ctx and nftlib.context() is mine else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert nftlib.context() is ctx
