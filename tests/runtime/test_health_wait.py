"""How soon the agent sees a starting container become healthy (runtime/health.py), on a
simulated clock: probes are cheap (a refused connection), a late one delays the whole rollout."""
import pytest

from runtime import health
from runtime.spec import Health


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, s):
        self.now += max(0.0, s)


@pytest.mark.parametrize("ready_at", [0.01, 0.05, 0.13, 0.16, 0.33, 0.7, 2.5])
def test_a_container_that_starts_serving_is_seen_within_25_ms(monkeypatch, ready_at):
    clock = Clock()
    probes = []

    def probe(spec, ip, run_exec):
        probes.append(clock.now)
        return (clock.now >= ready_at), "probe"
    monkeypatch.setattr(health, "probe", probe)
    spec = Health(kind="http", path="/healthz", port=8000, interval=1.0, timeout=2.0, retries=5, start_period=30.0)
    ok, _ = health.run_until_healthy(spec, "10.0.0.2", None, lambda: True, clock=clock, sleep=clock.sleep)
    assert ok
    assert clock.now - ready_at <= 0.025 + 1e-9
    assert len(probes) <= 4 + ready_at / 0.02          # and no busier than every ~20 ms


def test_failures_are_still_counted_once_an_interval_after_the_start_period(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(health, "probe", lambda spec, ip, run_exec: (False, "refused"))
    spec = Health(kind="http", path="/healthz", port=8000, interval=1.0, timeout=2.0, retries=3, start_period=2.0)
    ok, msg = health.run_until_healthy(spec, "10.0.0.2", None, lambda: True, clock=clock, sleep=clock.sleep)
    assert not ok and "3 failed checks" in msg
    assert 4.9 <= clock.now <= 5.1        # start_period, then 3 counted failures an interval apart
