import threading
import time

from orchestrator.errors import TransportError
from orchestrator.transport.fanout import fan_out


class H:
    def __init__(self, name):
        self.name = name


def test_failures_are_values_and_the_others_finish():
    def fn(h):
        if h.name == "b":
            raise TransportError("connection refused", host="b")
        if h.name == "c":
            raise ValueError("boom")
        return h.name.upper()

    res = fan_out([H("a"), H("b"), H("c"), H("d")], fn)
    assert res.ok == {"a": "A", "d": "D"}
    assert "connection refused" in str(res.failed["b"]) and "ValueError: boom" in str(res.failed["c"])
    assert not res.all_ok


def test_parallelism_is_bounded():
    running, peak, lock = [0], [0], threading.Lock()

    def fn(h):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1

    fan_out([H(str(i)) for i in range(20)], fn, max_parallel=3)
    assert peak[0] == 3


def test_results_are_handed_on_in_the_hosts_order_while_later_hosts_still_run():
    seen = []
    release = threading.Event()

    def fn(h):
        if h.name == "slow":
            release.wait(5)
        return h.name

    def on_done(name, value, error):
        seen.append(name)
        if name == "a":
            release.set()           # the slow one finishes only after "a" was handed on

    res = fan_out([H("a"), H("slow"), H("b")], fn, on_done=on_done)
    assert seen == ["a", "slow", "b"] and res.ok == {"a": "a", "slow": "slow", "b": "b"}


def test_no_hosts_and_one_host():
    assert fan_out([], lambda h: 1).ok == {} and fan_out([H("x")], lambda h: 1).ok == {"x": 1}


def test_an_exit_in_one_hosts_call_is_raised_here_and_nothing_hangs():
    import pytest

    def fn(h):
        if h.name == "b":
            raise SystemExit(3)
        return 1
    with pytest.raises(SystemExit):
        fan_out([H("a"), H("b"), H("c")], fn)


def test_a_host_without_a_name_fails_at_once():
    import pytest
    with pytest.raises(AttributeError):
        fan_out([H("a"), object()], lambda h: 1)


def test_once_the_caller_stops_no_more_hosts_begin_and_the_running_ones_are_waited_for():
    import pytest
    began, finished = [], []

    def fn(h):
        began.append(h.name)
        time.sleep(0.05)
        finished.append(h.name)

    def on_done(name, value, error):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fan_out([H(str(i)) for i in range(10)], fn, max_parallel=2, on_done=on_done)
    assert len(began) <= 4 and sorted(began) == sorted(finished)   # none left running
