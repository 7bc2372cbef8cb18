"""Health check timing, on a clock of its own (the probes are answered by the test): a starting
container is seen soon after it serves (a late probe delays the whole rollout), failures are
still counted an interval apart."""
import pytest

from runtime import health
from runtime.spec import Health


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def up_after(clock, seconds, probes):
    def run_exec(command, timeout):
        probes.append(clock.now)
        return 0 if clock.now >= seconds else 1
    return run_exec


def test_a_container_that_listens_2ms_after_its_start_is_seen_at_once():
    clock, probes = Clock(), []
    ok, _ = health.run_until_healthy(Health(kind="exec", command=("true",)), "10.88.0.2",
                                     up_after(clock, 0.002, probes), lambda: True,
                                     clock=clock, sleep=clock.sleep)
    assert ok and clock.now <= 0.0035
    assert len(probes) <= 2          # quick, not a busy loop


def test_quick_retries_never_count_as_failures_and_back_off_to_the_interval():
    clock, probes = Clock(), []
    spec = Health(kind="exec", command=("true",), interval=1.0, retries=3)
    ok, msg = health.run_until_healthy(spec, "10.88.0.2", up_after(clock, 99, probes),
                                       lambda: True, clock=clock, sleep=clock.sleep)
    assert not ok and "after 3 failed checks" in msg
    assert 3.0 <= clock.now <= 3.1          # three intervals, as before
    assert len(probes) < 30
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    assert max(gaps) <= 1.0 + 1e-9


@pytest.mark.parametrize("ready_at", [0.011, 0.031, 0.051, 0.081, 0.131, 0.161, 0.331, 0.7, 2.5])
def test_a_container_is_seen_within_a_tenth_of_its_start_time_5_to_20_ms(monkeypatch, ready_at):
    """A quick start (a small app, ~50 ms) is seen within ~5 ms, a slower one within a tenth of
    its start time and never later than 20 ms; few refused connections either way."""
    clock = Clock()
    probes = []

    def probe(spec, ip, run_exec):
        probes.append(clock.now)
        return (clock.now >= ready_at), "probe"
    monkeypatch.setattr(health, "probe", probe)
    spec = Health(kind="http", path="/healthz", port=8000, interval=1.0, timeout=2.0, retries=5, start_period=30.0)
    ok, _ = health.run_until_healthy(spec, "10.0.0.2", None, lambda: True, clock=clock, sleep=clock.sleep)
    assert ok
    assert clock.now - ready_at <= max(0.005, min(0.02, ready_at / 10)) + 0.002 + 1e-9
    assert len(probes) <= 26 + ready_at / 0.02          # and no busier than that


def test_failures_are_still_counted_once_an_interval_after_the_start_period(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(health, "probe", lambda spec, ip, run_exec: (False, "refused"))
    spec = Health(kind="http", path="/healthz", port=8000, interval=1.0, timeout=2.0, retries=3, start_period=2.0)
    ok, msg = health.run_until_healthy(spec, "10.0.0.2", None, lambda: True, clock=clock, sleep=clock.sleep)
    assert not ok and "3 failed checks" in msg
    assert 4.9 <= clock.now <= 5.1        # start_period, then 3 counted failures an interval apart
