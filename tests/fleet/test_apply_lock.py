"""apply holds the fleet lock on every host it changes: a host that did not answer the first
observe (so the lock was taken without it) but answers the observe made under the lock is
locked before anything is shipped or applied there, or is reported lost and left alone (the
lab test found apply refused there: 'the deploy lock is not held')."""
from types import SimpleNamespace

import pytest

from orchestrator.errors import OrchError
from orchestrator.fleet import deploy
from orchestrator.fleet.planner import HostFacts


class FakeClient:
    def __init__(self, name, fail_lock=False):
        self.name, self.fail_lock, self.session = name, fail_lock, None
        self.locks, self.unlocks = [], []

    @property
    def host(self):
        return self.name

    def lock(self, holder, ttl, token=None, force=False, timeout=60, observe=None):
        if self.fail_lock:
            raise OrchError(f"{self.name}: ssh: connection timed out")
        self.locks.append(token)
        return {"ok": True, "observe": {"asked": observe, "host": self.name}}

    def unlock(self, token, force=False, timeout=60, status=False):
        self.unlocks.append(token)
        return {"ok": True, "status": {"services": {}}} if status else {"ok": True}


def plan(up_to_date=False):
    return SimpleNamespace(up_to_date=up_to_date, failed_hosts=(), hosts=())


@pytest.fixture
def fleet(monkeypatch):
    a, b = FakeClient("amd64-1"), FakeClient("amd64-2")
    first = deploy.Observed({"amd64-1": HostFacts("amd64-1"), "amd64-2": HostFacts("amd64-2", error="timed out")},
                            {"amd64-1": a}, plan())
    seen = {}

    def observe_again(prep, pool, allow_downgrade=False, again=None, seen_under_lock=None):
        seen["under_lock"] = dict(seen_under_lock or {})
        return deploy.Observed({"amd64-1": HostFacts("amd64-1"), "amd64-2": HostFacts("amd64-2")},
                               {"amd64-1": a, "amd64-2": b}, plan())

    def applied(prep, obs, pool, lock, report, *rest):
        seen["held"] = dict(lock.clients)
        seen["lost"] = dict(report.lost)

    monkeypatch.setattr(deploy, "observe", observe_again)
    monkeypatch.setattr(deploy, "_apply_locked", applied)
    monkeypatch.setattr(deploy, "final_releases", lambda *a, **k: {})
    prep = SimpleNamespace(hosts=[SimpleNamespace(name="amd64-1", platform="linux/amd64"),
                                  SimpleNamespace(name="amd64-2", platform="linux/amd64")],
                           releases=[])
    return prep, first, a, b, seen


def test_a_host_that_answers_only_under_the_lock_is_locked_before_it_is_changed(fleet):
    prep, first, a, b, seen = fleet
    deploy.apply(prep, first, pool=None)
    assert sorted(seen["held"]) == ["amd64-1", "amd64-2"]
    assert b.locks and b.locks == a.locks[:1]           # the same session's token
    assert b.unlocks == a.unlocks and a.unlocks            # and released with the rest
    # the host taken under the lock first answered the same lock call with its observe
    assert seen["under_lock"]["amd64-1"] == {"asked": {"digests": []}, "host": "amd64-1"}


def test_one_whose_lock_fails_is_reported_lost_and_not_changed(fleet):
    prep, first, a, b, seen = fleet
    b.fail_lock = True
    report = deploy.apply(prep, first, pool=None)
    assert sorted(seen["held"]) == ["amd64-1"]
    assert "amd64-2" in seen["lost"] and "amd64-2" in report.lost
    assert not report.ok
