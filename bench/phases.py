#!/usr/bin/env python3
"""Where the time of one `orch apply` goes (prints a timeline; not a test).

    .venv/bin/python bench/phases.py DIR [--touch FILE] [--rounds 3]

DIR is a manifests directory whose fleet is up (e.g. a lab `bench/peers.py --keep` left, or
any lab fleet: it is brought up if needed). Each round appends a comment line to FILE (a file
under DIR, so the release changes; omit for a no-op) and runs the same steps as `orch apply`
in this process, printing when each phase and each agent request started and ended: imports,
load + build, observe (per host), lock, ship, every agent verb per host, final status.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

T0 = time.monotonic()
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.agent import session as agent_session  # noqa: E402
from orchestrator.fleet import deploy  # noqa: E402
from orchestrator.transport.ssh import ConnectionPool  # noqa: E402

IMPORTS = time.monotonic() - T0
EVENTS = []


def traced_call(orig):
    def call(self, verb, request=None, **kw):
        t = time.monotonic()
        try:
            return orig(self, verb, request, **kw)
        finally:
            EVENTS.append((t, time.monotonic(), f"{self.host}: {verb}"))
    return call


def machine_busy() -> float:
    """CPU seconds the whole machine spent busy (all cores, /proc/stat), for the share a
    round takes: on a 2-core machine a rollout to 5 hosts can be CPU-bound."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def phase(name, fn, *args, **kw):
    t = time.monotonic()
    try:
        return fn(*args, **kw)
    finally:
        EVENTS.append((t, time.monotonic(), name))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("directory")
    ap.add_argument("--touch", help="file under DIR to append a comment line to before each round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    agent_session.AgentSession.call = traced_call(agent_session.AgentSession.call)
    print(f"imports: {IMPORTS:.3f} s (this process; `orch` adds its CLI)")
    for r in range(args.rounds):
        EVENTS.clear()
        if args.touch:
            with open(Path(args.directory) / args.touch, "a") as f:
                f.write(f"\n/* phases {time.time()} */\n" if not args.touch.endswith(".py") else f"\n# {time.time()}\n")
        start = time.monotonic()
        busy0, here0 = machine_busy(), time.process_time()
        prep = phase("load + build", deploy.prepare, args.directory, {})
        with ConnectionPool(h.target for h in prep.hosts) as pool:
            obs = phase("observe (all hosts)", deploy.observe, prep, pool)
            if not obs.plan.up_to_date:
                phase("lock, ship, roll out, status, unlock", deploy.apply, prep, obs, pool)
            t = time.monotonic()
        EVENTS.append((t, time.monotonic(), "close sessions"))
        total = time.monotonic() - start
        busy, here = machine_busy() - busy0, time.process_time() - here0
        print(f"\nround {r + 1}: {total:.3f} s   (cpu: this process {here:.2f} s, whole machine "
              f"{busy:.2f} s of {total * (os.cpu_count() or 1):.2f} s)")
        for a, b, name in sorted(EVENTS):
            print(f"  {a - start:7.3f} -> {b - start:7.3f}  {b - a:6.3f} s  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
