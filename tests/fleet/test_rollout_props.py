"""Rollout waves and the rollout itself, for any fleet (hypothesis): every host in exactly one
wave, in fleet order, canary first; a failure halts every later wave, never touches a host twice,
and with on_failure: rollback reverts exactly the hosts that switched for that service."""
from hypothesis import given, settings, strategies as st

from orchestrator.fleet.planner import plan_waves
from tests.fleet.test_rollout import run

hosts_st = st.lists(st.text("abcdefgh", min_size=1, max_size=3), max_size=12, unique=True)


@given(hosts=hosts_st, canary=st.integers(0, 5), size=st.integers(1, 6))
def test_waves_cover_every_host_once_in_order_canary_first(hosts, canary, size):
    waves = plan_waves("web", hosts, canary, size)
    assert [h for w in waves for h in w.hosts] == hosts
    assert [w.number for w in waves] == list(range(len(waves)))
    assert all(w.hosts for w in waves)
    if canary and hosts:
        assert waves[0].canary and waves[0].hosts == tuple(hosts[:canary])
    assert all(not w.canary and len(w.hosts) <= size for w in waves[1 if canary and hosts else 0:])


@settings(max_examples=60, deadline=None)
@given(hosts=hosts_st, data=st.data(), canary=st.integers(0, 3), size=st.integers(1, 4),
       policy=st.sampled_from(["halt", "rollback"]))
def test_a_failure_halts_later_waves_and_rollback_reverts_exactly_the_switched(hosts, data, canary,
                                                                               size, policy):
    failing = set(data.draw(st.lists(st.sampled_from(hosts), unique=True) if hosts else st.just([])))
    res, applied, reverted = run(hosts, failing, policy, canary, size)
    waves = plan_waves("web", hosts, canary, size)
    first_bad = next((i for i, w in enumerate(waves) if set(w.hosts) & failing), None)
    ran = [h for w in waves[:None if first_bad is None else first_bad + 1] for h in w.hosts]
    assert sorted(applied) == sorted(ran) and len(applied) == len(set(applied))
    assert res.ok == (first_bad is None)
    switched = [h for h in ran if h not in failing]
    if policy == "rollback" and first_bad is not None:
        assert sorted(h for h, _ in reverted) == sorted(switched)
        assert all(old == "r-old" for _, old in reverted)
    else:
        assert reverted == []
