"""The reconcile loop's scheduling (pure logic over a host stand-in: no runc, no kernel)."""
import contextlib
import os
import tempfile
import types

import pytest

from runtime import reconcile
from runtime.planner import Box, Current, Observed, Restart, Want


class Host:
    """Two services whose containers died (after a reboot); ``broken`` ones fail to start."""

    def __init__(self, broken=()):
        self.broken = set(broken)
        self.ran = []
        self.up = set()
        self.now = 1000.0
        self.state = self
        self.logged = []
        state = tempfile.mkdtemp()
        for name in ("status.json", "target.json"):      # nothing lost: no repair
            open(os.path.join(state, name), "w").close()
        self.layout = types.SimpleNamespace(state=state)

    @contextlib.contextmanager
    def flock(self, name, blocking=True):
        yield True

    def clock(self):
        return self.now

    def sleep(self, s):
        self.now += s

    def log(self, msg):
        self.logged.append(msg)

    def wants(self):
        return (Want("aa", "r1", "m"), Want("bb", "r1", "m"))

    def observe(self, wants):
        boxes = tuple(Box(w.service, "a", "r1", "i-" + w.service,
                          "running" if w.service in self.up else "stopped") for w in wants)
        return Observed(boxes=boxes, current=tuple(Current(w.service, "r1", "a") for w in wants),
                        images=frozenset({"m"}), now=self.now)

    def attempt(self, step, wants, obs):
        self.ran.append(step)
        if step.service in self.broken:
            raise RuntimeError(f"{step.service}: secret not on this host yet")
        self.up.add(step.service)

    def maintain(self):
        pass

    def probe_serving(self, probes):
        pass


def test_serve_starts_the_others_while_one_service_backs_off():
    h = Host(broken={"aa"})
    failures = {}
    for _ in range(4):
        reconcile.tick(h, {}, failures)
    assert Restart("bb", "a", "r1") in h.ran and "bb" in h.up
    assert h.ran.count(Restart("aa", "a", "r1")) == 1                # backing off, not hammered
    assert failures["aa"][0] == 1 and "secret" in h.logged[0]
    h.now += 5
    h.broken.clear()
    for _ in range(2):
        reconcile.tick(h, {}, failures)
    assert h.up == {"aa", "bb"} and "aa" not in failures


def test_apply_gives_up_on_one_service_and_converges_the_other():
    h = Host(broken={"aa"})
    given_up = reconcile.converge(h, services=["aa", "bb"])
    assert set(given_up) == {"aa"} and "secret not on this host" in given_up["aa"]
    assert "bb" in h.up


def test_a_host_wide_failure_still_raises():
    h = Host()
    h.wants = lambda: ()
    h.observe = lambda wants: Observed(network_ready=False, boxes=(Box("x", "a", "r", "i", "running"),))
    h.attempt = lambda *a: (_ for _ in ()).throw(RuntimeError("no bridge"))
    with pytest.raises(RuntimeError, match="no bridge"):
        reconcile.converge(h)


class Swapped(Host):
    """``web`` serves r2 from slot b since t=1000 (drain 1 s); slot a still runs r1."""

    def __init__(self, wanted="r2"):
        super().__init__()
        self.wanted = wanted
        self.boxes = {"a": "r1", "b": "r2"}
        self.current = Current("web", "r2", "b", since=1000.0)

    def wants(self):
        return (Want("web", self.wanted, "m", drain=1.0),)

    def observe(self, wants):
        boxes = tuple(Box("web", slot, rel, f"i-{slot}-{rel}", "running", "10.0.0.1")
                      for slot, rel in sorted(self.boxes.items()))
        return Observed(boxes=boxes, current=(self.current,),
                        images=frozenset({"m"}), now=self.now,
                        healthy=frozenset(f"i-{s}-{r}" for s, r in self.boxes.items()))

    def attempt(self, step, wants, obs):
        self.ran.append((type(step).__name__, round(self.now, 3)))
        if type(step).__name__ == "Stop":
            del self.boxes[step.slot]
        elif type(step).__name__ == "Start":
            self.boxes[step.slot] = step.release
        elif type(step).__name__ == "Switch":
            self.current = Current("web", step.release, step.slot, since=self.now)


def test_apply_answers_without_waiting_for_the_old_slot_s_drain_and_stop():
    h = Swapped()
    h.now = 1000.1
    assert reconcile.converge(h, ["web"]) == {}
    assert h.ran == [] and h.now == 1000.1 and "a" in h.boxes       # left to serve
    reconcile.tick(h)                                                # serve: still draining
    assert h.ran == []
    h.now = 1001.2
    reconcile.tick(h)
    assert h.ran == [("Stop", 1001.2)]


def test_a_next_release_waits_for_the_rest_of_the_old_slot_s_drain_first():
    h = Swapped(wanted="r3")
    h.now = 1000.4
    assert reconcile.converge(h, ["web"]) == {}
    assert [r[0] for r in h.ran] == ["Stop", "Start", "Switch"] and h.ran[0][1] >= 1001.0, h.ran
    assert h.boxes == {"a": "r3", "b": "r2"}      # r2's slot now drains in its turn
