"""The process's nftables context (runtime/nftlib.py)."""
import os

from runtime import nftlib


def test_a_forked_child_opens_its_own_context():
    """serve forks agent sessions: a child that used its parent's netlink socket would read
    the answers to the parent's requests (and the parent the child's)."""
    ctx = nftlib.context()
    assert ctx is not None, "libnftables1 (with nftables, .ci/setup) is missing"
    assert nftlib.context() is ctx                  # one per process
    pid = os.fork()
    if pid == 0:
        mine = nftlib.context()
        os._exit(0 if mine is not None and mine is not ctx and nftlib.context() is mine else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert nftlib.context() is ctx


def test_a_library_that_cannot_talk_to_the_kernel_leaves_the_work_to_the_binary():
    """(A foreign-arch library under qemu-user translates no netfilter netlink.) Here: a
    process without CAP_NET_ADMIN, whose every nftables command is refused by the kernel."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os._exit(0 if nftlib._load() is None else 1)
        except BaseException:  # noqa: BLE001
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_serve_runs_the_binary_and_the_sessions_it_forks_the_library():
    pid = os.fork()
    if pid == 0:
        try:
            nftlib.binary_in_this_process()        # what serve does
            if nftlib.context() is not None:
                os._exit(1)
            child = os.fork()
            if child == 0:                          # a session at the door
                os._exit(0 if nftlib.context() is not None else 1)
            _, status = os.waitpid(child, 0)
            os._exit(0 if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 else 2)
        except BaseException:  # noqa: BLE001
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
