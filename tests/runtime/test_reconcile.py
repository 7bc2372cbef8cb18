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
