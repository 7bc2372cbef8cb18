"""The old slots' drain and stop run after `apply` answers, in a finisher (runtime/agent.py):
a fork of the agent process that answered, detached, with no stdio of its caller."""
import os
import time

from runtime import agent
from runtime.layout import Layout


def test_the_finisher_is_a_detached_fork_that_holds_none_of_its_callers_streams(tmp_path, monkeypatch):
    out = tmp_path / "finisher"
    r, w = os.pipe()                     # stands for the session's channel to its caller

    def fake_finish(layout, services, log=None):
        fds = sorted(int(n) for n in os.listdir("/proc/self/fd"))
        with open(f"{out}.tmp", "w") as f:         # renamed when whole: the test polls for it
            f.write(repr({"pid": os.getpid(), "sid": os.getsid(0), "ppid": os.getppid(), "fds": fds,
                          "services": services, "stdin": os.readlink("/proc/self/fd/0"),
                          "nice": os.getpriority(os.PRIO_PROCESS, 0),
                          "cmdline": open("/proc/self/cmdline", "rb").read()}))
        os.replace(f"{out}.tmp", out)
        return {}
    monkeypatch.setattr(agent, "verb_finish", fake_finish)
    started = time.monotonic()
    agent.start_finisher(Layout(str(tmp_path / "root"), str(tmp_path / "run")), ["web"])
    assert time.monotonic() - started < 1.0          # the caller does not wait for it
    os.close(w)
    deadline = time.monotonic() + 10
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    seen = eval(out.read_text())
    assert seen["services"] == ["web"]
    assert seen["cmdline"] == open("/proc/self/cmdline", "rb").read()   # a fork: no new Python
    assert seen["sid"] != os.getsid(0) and seen["ppid"] != os.getpid()
    assert seen["stdin"] == os.devnull
    assert seen["nice"] == max(agent.BACKGROUND_NICE, os.getpriority(os.PRIO_PROCESS, 0))   # yields
    assert [fd for fd in seen["fds"] if fd > 2] in ([], [3])             # 3: listdir's own
    assert os.read(r, 1) == b""                                          # the caller's EOF came
    os.close(r)
