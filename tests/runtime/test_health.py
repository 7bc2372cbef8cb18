"""Health check timing, on a clock of its own (the probes are exec checks answered by the test)."""
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
