"""The pure planner, table-driven: (desired, observed) -> the steps it must emit."""
import pytest

from runtime.planner import (Begin, Box, CheckHealth, Current, EnsureNetwork, Fail, Forget, Observed,
                             Restart, Restarts, Revert, Settle, Start, Stop, Switch, SyncPorts,
                             Unpack, Wait, Want, backoff, plan)

M = "sha256:" + "1" * 64
W1 = Want("web", "r1", M, ports=(("tcp", 8080, 80),))
W2 = Want("web", "r2", M, ports=(("tcp", 8080, 80),))
W2_MON = Want("web", "r2", M, ports=(("tcp", 8080, 80),), drain=1.0, monitor=2.0)
W2_DRAIN = Want("web", "r2", M, ports=(("tcp", 8080, 80),), drain=1.0)
W3_DRAIN = Want("web", "r3", M, ports=(("tcp", 8080, 80),), drain=1.0)
W2_SF = Want("web", "r2", M, ports=(("tcp", 8080, 80),), stop_first=True)
W2_EX = Want("web", "r2", M, ports=(("tcp", 8080, 80),), exclusive=True)
A1 = Box("web", "a", "r1", "i-a1", "running", "10.88.0.2")
B2 = Box("web", "b", "r2", "i-b2", "running", "10.88.0.3")
PM_A = (("tcp", 8080, "10.88.0.2", 80),)
PM_B = (("tcp", 8080, "10.88.0.3", 80),)
B2_MADE = Box("web", "b", "r2", "i-b2", "created", "10.88.0.3")
CUR_A1 = (Current("web", "r1", "a"),)
CUR_B2 = (Current("web", "r2", "b"),)


def obs(**kw):
    kw.setdefault("images", frozenset({M}))
    return Observed(**kw)


CASES = [
    ("network first", (W1,), obs(network_ready=False), [EnsureNetwork()]),
    ("no network while nothing is wanted", (), obs(network_ready=False), []),
    ("unpack before start", (W1,), obs(images=frozenset()), [Unpack(M)]),
    ("first start in slot a", (W1,), obs(), [Start("web", "a", "r1")]),
    ("check health of the new slot", (W1,), obs(boxes=(A1,)), [CheckHealth("web", "a", "i-a1")]),
    ("switch once healthy", (W1,), obs(boxes=(A1,), healthy=frozenset({"i-a1"})),
     [Switch("web", "a", "r1", ())]),
    ("steady: nothing to do", (W1,), obs(boxes=(A1,), current=CUR_A1, port_map=PM_A), []),
    ("port map drifted: resync", (W1,), obs(boxes=(A1,), current=CUR_A1),
     [SyncPorts(PM_A)]),
    ("change: start the other slot", (W2,), obs(boxes=(A1,), current=CUR_A1, port_map=PM_A),
     [Start("web", "b", "r2")]),
    ("stateful: the old slot stops before the new one starts (unmapped first)", (W2_EX,),
     obs(boxes=(A1,), current=CUR_A1, port_map=PM_A),
     [SyncPorts(()), Stop("web", "a", "stop-first: stateful, one slot at a time")]),
    ("stateful: then the new slot starts", (W2_EX,), obs(current=CUR_A1, port_map=PM_A),
     [SyncPorts(()), Start("web", "b", "r2")]),
    ("change: check green", (W2,), obs(boxes=(A1, B2), current=CUR_A1, port_map=PM_A),
     [CheckHealth("web", "b", "i-b2")]),
    ("change: switch to green", (W2,), obs(boxes=(A1, B2), current=CUR_A1, port_map=PM_A,
                                            healthy=frozenset({"i-b2"})),
     [Switch("web", "b", "r2", ("r1",))]),
    ("switch: the history gains blue, keeps the last keep_releases, never the serving one",
     (Want("web", "r2", M, ports=(("tcp", 8080, 80),), keep_releases=3),),
     obs(boxes=(A1, B2), current=CUR_A1, healthy=frozenset({"i-b2"}), port_map=PM_A,
         history=(("web", ("r0", "r2", "r9")),)),
     [Switch("web", "b", "r2", ("r9", "r1"))]),
    ("after switch, no drain: stop blue, in the background", (W2,),
     obs(boxes=(A1, B2), current=CUR_B2, port_map=PM_B, healthy=frozenset({"i-b2"})),
     [Stop("web", "a", "old slot", background=True)]),
    ("after switch with monitor: settle (the monitor window only)", (W2_MON,),
     obs(boxes=(A1, B2), current=CUR_B2, port_map=PM_B, healthy=frozenset({"i-b2"})),
     [Settle("web", "b", "i-b2", "a", 2.0)]),
    ("settled, drain not over: blue keeps finishing its connections", (W2_MON,),
     obs(boxes=(A1, B2), current=(Current("web", "r2", "b", since=100.0),), port_map=PM_B,
         settled=frozenset({"i-b2"}), now=100.25), [Wait(0.75)]),
    ("settled, drain over: stop blue in the background", (W2_MON,),
     obs(boxes=(A1, B2), current=(Current("web", "r2", "b", since=100.0),), port_map=PM_B,
         settled=frozenset({"i-b2"}), now=101.0), [Stop("web", "a", "old slot", background=True)]),
    ("drain without monitor: no settle step, a wait", (W2_DRAIN,),
     obs(boxes=(A1, B2), current=(Current("web", "r2", "b", since=100.0),), port_map=PM_B,
         healthy=frozenset({"i-b2"}), now=100.5), [Wait(0.5)]),
    ("a next release while blue still drains: it waits for the drain (blocking)", (W3_DRAIN,),
     obs(boxes=(A1, B2), current=(Current("web", "r2", "b", since=100.0),), port_map=PM_B,
         now=100.5), [Wait(0.5, blocks="web")]),
    ("a next release once blue drained: the stale slot goes first", (W3_DRAIN,),
     obs(boxes=(A1, B2), current=(Current("web", "r2", "b", since=100.0),), port_map=PM_B,
         now=101.5), [Stop("web", "a", "stale slot")]),
    ("settle window failed: revert to blue, the failed release out of the history", (W2_MON,),
     obs(boxes=(A1, B2), current=CUR_B2, port_map=PM_B, healthy=frozenset({"i-b2"}),
         failed=frozenset({("web", "r2")}), history=(("web", ("r0", "r1")),)),
     [Revert("web", "a", "r1", ("r0",))]),
    ("settle window failed, blue gone too: keep green serving", (W2_MON,),
     obs(boxes=(B2,), current=CUR_B2, port_map=PM_B, failed=frozenset({("web", "r2")})), []),
    ("crashed container: its ports are unmapped before it restarts", (W1,),
     obs(boxes=(Box("web", "a", "r1", "i-a1", "created", "10.88.0.2"),), current=CUR_A1,
         port_map=PM_A), [SyncPorts(()), Restart("web", "a", "r1")]),
    ("failed health: remove green, keep blue", (W2,),
     obs(boxes=(A1, B2), current=CUR_A1, port_map=PM_A, failed=frozenset({("web", "r2")})),
     [Stop("web", "b", "old slot", background=True)]),
    ("failed release: hold blue", (W2,),
     obs(boxes=(A1,), current=CUR_A1, port_map=PM_A, failed=frozenset({("web", "r2")})), []),
    ("green exited before healthy: fail", (W2,),
     obs(boxes=(A1, Box("web", "b", "r2", "i-b2", "stopped", "10.88.0.3")), current=CUR_A1,
         port_map=PM_A), [Fail("web", "r2", "container exited before it became healthy")]),
    ("interrupted start (kill -9): clean and retry", (W2,),
     obs(boxes=(A1, Box("web", "b", "r2", "i-b2", "created", "10.88.0.3")), current=CUR_A1,
         port_map=PM_A), [Stop("web", "b", "interrupted start")]),
    ("stale other slot is removed first", (W2,),
     obs(boxes=(A1, Box("web", "b", "r0", "i-b0", "running", "10.88.0.9")), current=CUR_A1,
         port_map=PM_A), [Stop("web", "b", "stale slot")]),
    ("serving slot crashed: restart", (W1,),
     obs(boxes=(Box("web", "a", "r1", "i-a1", "stopped", "10.88.0.2"),), current=CUR_A1,
         port_map=PM_A), [SyncPorts(()), Restart("web", "a", "r1")]),
    ("serving slot crashed again: back off", (W1,),
     obs(boxes=(), current=CUR_A1, restarts=(Restarts("web", "a", 3, 100.0),), now=100.5),
     [Wait(1.5)]),
    ("backoff over: restart", (W1,),
     obs(boxes=(), current=CUR_A1, restarts=(Restarts("web", "a", 3, 100.0),), now=103.0),
     [Restart("web", "a", "r1")]),
    ("no room, no stop-first: fail clearly", (W2,),
     obs(boxes=(A1,), current=CUR_A1, port_map=PM_A, free_memory=1 << 20),
     [Fail("web", "r2", "not enough free disk or memory for a second slot (set stop_first "
           "to allow stop-first)")]),
    ("no room, stop-first allowed, blue unmapped: stop blue first", (W2_SF,),
     obs(boxes=(A1,), current=CUR_A1, port_map=(), free_memory=1 << 20),
     [Stop("web", "a", "stop-first: blue/green does not fit")]),
    ("stop-first: blue leaves the port map before it stops", (W2_SF,),
     obs(boxes=(A1,), current=CUR_A1, port_map=PM_A, free_memory=1 << 20),
     [SyncPorts(()), Stop("web", "a", "stop-first: blue/green does not fit")]),
    ("a serving slot that runs another release is stopped, unmapped first", (W1,),
     obs(boxes=(Box("web", "a", "r0", "i-a0", "running", "10.88.0.2"),), current=CUR_A1, port_map=PM_A),
     [SyncPorts(()), Stop("web", "a", "runs r0, not the r1 it serves")]),
    ("a failed release leaves the old one serving: its crash restarts the old one", (W2,),
     obs(boxes=(), current=CUR_A1, failed=frozenset({("web", "r2")})), [Restart("web", "a", "r1")]),
    ("stop-first, blue gone: start green", (W2_SF,),
     obs(boxes=(), current=CUR_A1, free_memory=1 << 20), [Start("web", "b", "r2")]),
    ("room is the memory limit", (Want("web", "r2", M, ports=(("tcp", 8080, 80),), memory=256 << 20),),
     obs(boxes=(A1,), current=CUR_A1, port_map=PM_A, free_memory=128 << 20),
     [Fail("web", "r2", "not enough free disk or memory for a second slot (set stop_first "
           "to allow stop-first)")]),
    ("room is some free disk too", (W2,),
     obs(boxes=(A1,), current=CUR_A1, port_map=PM_A, free_disk=10 << 20),
     [Fail("web", "r2", "not enough free disk or memory for a second slot (set stop_first "
           "to allow stop-first)")]),
    ("service removed: stop and forget", (),
     obs(boxes=(A1,), current=CUR_A1, port_map=PM_A),
     [SyncPorts(()), Stop("web", "a", "service removed")]),
    ("service removed, nothing left: forget", (), obs(current=CUR_A1), [Forget("web")]),
    # prepared: created (not started) during an earlier wave, held while its session's lock is
    ("change: a prepared green slot is begun, not made again", (W2,),
     obs(boxes=(A1, B2_MADE), current=CUR_A1, port_map=PM_A, held=frozenset({"i-b2"})),
     [Begin("web", "b", "i-b2")]),
    ("change: a created slot nobody holds is an interrupted start", (W2,),
     obs(boxes=(A1, B2_MADE), current=CUR_A1, port_map=PM_A),
     [Stop("web", "b", "interrupted start")]),
    ("steady: a held slot prepared for the next release stays", (W1,),
     obs(boxes=(A1, B2_MADE), current=CUR_A1, port_map=PM_A, held=frozenset({"i-b2"})), []),
    ("steady: once the lock is gone, the prepared slot goes (in the background)", (W1,),
     obs(boxes=(A1, B2_MADE), current=CUR_A1, port_map=PM_A),
     [Stop("web", "b", "old slot", background=True)]),
    ("a new service's held slot stays before its target arrives", (),
     obs(boxes=(Box("web", "a", "r1", "i-a1", "created", "10.88.0.2"),), held=frozenset({"i-a1"})),
     []),
    ("a new service's slot nobody holds goes", (),
     obs(boxes=(Box("web", "a", "r1", "i-a1", "created", "10.88.0.2"),)),
     [Stop("web", "a", "service removed")]),
    ("a held slot of another release is stale for this one", (W3_DRAIN,),
     obs(boxes=(A1, B2_MADE), current=CUR_A1, port_map=PM_A, held=frozenset({"i-b2"})),
     [Stop("web", "b", "stale slot")]),
]


@pytest.mark.parametrize("desired,observed,expected",
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_plan(desired, observed, expected):
    assert plan(desired, observed) == expected


def test_waits_come_after_work_and_only_the_shortest():
    other = Want("api", "x1", M)
    o = obs(boxes=(), current=CUR_A1 + (Current("api", "x0", "a"),),
            restarts=(Restarts("web", "a", 3, 100.0), Restarts("api", "a", 1, 100.0)),
            now=100.2)
    steps = plan((W1, other), o)
    assert steps == [Start("api", "b", "x1"), Wait(1.8)]


def test_backoff_grows_and_is_capped():
    assert [backoff(n) for n in range(0, 4)] == [0.0, 0.5, 1.0, 2.0]
    assert backoff(50) == 30.0


def test_plan_is_deterministic_and_pure():
    o = obs(boxes=(A1, B2), current=CUR_A1, port_map=PM_A, healthy=frozenset({"i-b2"}))
    assert plan((W2,), o) == plan((W2,), o)
