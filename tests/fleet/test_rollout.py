import pytest
from orchestrator.errors import OrchError
from orchestrator.fleet.planner import Change, FleetPlan, HostPlan, plan_waves
from orchestrator.fleet.rollout import ServicePolicy, run_rollout


def make_plan(hosts, canary=1, size=1):
    plans = tuple(HostPlan(h, "linux/amd64", (Change("web", "r-old", "r-new", "m"),)) for h in hosts)
    return FleetPlan(plans, tuple(plan_waves("web", hosts, canary, size)))


def run(hosts, failing, on_failure="halt", canary=1, size=1, dropped=()):
    applied, reverted = [], []

    def apply_one(host, service):
        applied.append(host)
        if host in failing:
            return {"services": {service: {"ok": False, "error": "health check failed"}}}
        return {"services": {service: {"ok": True, "release": "r-new"}}}

    def revert_one(host, service, old):
        reverted.append((host, old))

    res = run_rollout(make_plan(hosts, canary, size), {"web": ServicePolicy(on_failure)}, apply_one, revert_one,
                      dropped=dropped)
    return res, applied, reverted


def test_all_waves_run_when_every_host_succeeds():
    res, applied, reverted = run(["a", "b", "c"], failing=set())
    assert res.ok and applied == ["a", "b", "c"] and reverted == []


def test_failing_canary_halts_with_no_other_host_touched():
    res, applied, reverted = run(["a", "b", "c"], failing={"a"})
    assert applied == ["a"] and not res.ok
    assert "canary failed on a" in res.halted
    assert res.skipped == {"web": ["b", "c"]}


def test_rollback_reverts_earlier_waves_when_a_later_one_fails():
    res, applied, reverted = run(["a", "b", "c", "d"], failing={"c"}, on_failure="rollback", canary=1, size=2)
    assert applied == ["a", "b", "c"]
    assert sorted(reverted) == [("a", "r-old"), ("b", "r-old")]
    assert {o.host for o in res.outcomes if o.reverted} == {"a", "b"}
    assert res.skipped == {"web": ["d"]}


def test_halt_keeps_earlier_waves_switched():
    res, applied, reverted = run(["a", "b", "c"], failing={"b"}, on_failure="halt")
    assert reverted == [] and [o.host for o in res.outcomes if o.ok] == ["a"]


def test_an_exception_from_one_host_is_a_failed_outcome():
    def apply_one(host, service):
        raise RuntimeError("link dropped")
    res = run_rollout(make_plan(["a"], canary=0), {}, apply_one, lambda *a: None)
    assert res.failed[0].host == "a" and "link dropped" in res.failed[0].error


def test_dropped_hosts_are_not_tried():
    res, applied, _ = run(["a", "b", "c"], failing=set(), canary=0, size=3, dropped=("b",))
    assert applied == ["a", "c"]


def two_service_plan(hosts):
    plans = tuple(HostPlan(h, "linux/amd64", (Change("api", "r-old", "r-new", "m"),
                                              Change("web", "r-old", "r-new", "m"))) for h in hosts)
    waves = tuple(plan_waves("api", hosts, 1, 1)) + tuple(plan_waves("web", hosts, 1, 1))
    return FleetPlan(plans, waves)


def test_one_service_failing_does_not_stop_another_on_the_same_hosts():
    applied = []

    def apply_one(host, service):
        applied.append((host, service))
        ok = service != "api"
        return {"services": {service: {"ok": ok, "release": "r-new", "error": None if ok else "crash loop"}}}

    res = run_rollout(two_service_plan(["a", "b"]), {"api": ServicePolicy("halt")}, apply_one,
                      lambda *a: None)
    assert applied == [("a", "api"), ("a", "web"), ("b", "web")]     # web goes on, on a too
    assert not res.ok and "api: canary failed on a" in res.halted and "web" not in res.halted
    assert res.skipped == {"api": ["b"]}
    assert sorted(o.host for o in res.outcomes if o.service == "web" and o.ok) == ["a", "b"]


def test_a_host_that_stops_answering_is_dropped_for_every_service():
    applied = []

    def apply_one(host, service):
        applied.append((host, service))
        if host == "a":
            raise OrchError("a: apply timed out after 30 s")
        return {"services": {service: {"ok": True, "release": "r-new"}}}

    res = run_rollout(two_service_plan(["a", "b"]), {}, apply_one, lambda *a: None)
    assert applied == [("a", "api"), ("b", "web")]                 # a is not asked again
    assert res.skipped == {"api": ["b"], "web": ["a"]}


def test_the_deadline_of_an_apply_counts_what_the_spec_allows():
    from orchestrator.fleet.rollout import apply_deadline
    base = apply_deadline({}, 10)                                 # no health: drain 2 + stop 10 + settle 3
    assert base == 25.0
    slow = {"health": {"kind": "http", "path": "/", "port": 80, "interval": 5, "timeout": 2, "retries": 3},
            "monitor": 30, "drain": 2, "stop_timeout": 10}
    assert apply_deadline(slow, 10) == 10 + 4 * 7 + 30 + 2 + 10 + 3


@pytest.mark.parametrize("why,reverted", [("apply: agent session ended: killed by signal 9", True),
                                          ("apply: agent session ended: timed out after 30s", False)])
def test_a_killed_canary_is_reverted_with_rollback_and_a_silent_one_is_not(why, reverted):
    from orchestrator.errors import TransportError
    done = []

    def apply_one(host, service):
        raise TransportError(why, host=host)

    res = run_rollout(make_plan(["a", "b"]), {"web": ServicePolicy("rollback")}, apply_one,
                      lambda host, service, old: done.append((host, old)))
    assert not res.ok and res.failed[0].host == "a"
    assert done == ([("a", "r-old")] if reverted else [])        # it may have switched before it died
    assert res.failed[0].unreachable is (not reverted)


def test_a_wave_waits_only_for_its_own_hosts_blobs_and_a_failed_shipment_drops_its_host():
    """Pipelined: the canary starts once the canary's blobs arrived (the others still ship); a
    host whose shipment failed is left out (reported by the shipper), not a failed wave."""
    asked, applied = [], []

    def ready(host):
        asked.append((host, list(applied)))
        return host != "c"

    def apply_one(host, service):
        applied.append(host)
        return {"services": {service: {"ok": True, "release": "r-new"}}}

    res = run_rollout(make_plan(["a", "b", "c", "d"], canary=1, size=3), {"web": ServicePolicy()},
                      apply_one, lambda *a: None, ready=ready)
    assert res.ok and applied == ["a", "b", "d"]
    assert asked[0] == ("a", []) and all(before == ["a"] for h, before in asked[1:]), asked
    assert res.skipped == {}


def test_later_waves_name_each_host_with_the_services_it_changes_after_their_first_wave_but_no_canary():
    from types import SimpleNamespace as NS

    from orchestrator.fleet.deploy import later_waves
    plan = NS(waves=[NS(service="web", hosts=("h1",)), NS(service="db", hosts=("h2",)),
                     NS(service="web", hosts=("h2", "h3")), NS(service="db", hosts=("h1",)),
                     NS(service="web", hosts=("h4",))])
    # h1 and h2 run a canary (web's, db's): their own canary would wait for a preparation
    assert later_waves(plan) == {"h3": ["web"], "h4": ["web"]}
    assert later_waves(NS(waves=[])) == {}
    assert later_waves(NS(waves=[NS(service="web", hosts=("h1",)), NS(service="web", hosts=("h2", "h3"))])) \
        == {"h2": ["web"], "h3": ["web"]}
