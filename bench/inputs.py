#!/usr/bin/env python3
"""How fast a missing input stops a command: `orch apply examples/python-app` without its secret.

    .venv/bin/python bench/inputs.py [--rounds 5]

Runs the real CLI as a new process (interpreter start, imports, manifest load, input check),
with PYAPP_GREETING_KEY unset and an empty ORCH_HOME, and prints the median and worst wall time,
the CPU time a run takes (what it costs on an idle machine), the exit code and the first error line. It also says whether anything was built (the store
must stay absent). Nothing is built and no lab or host is touched when the check works.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    times, first = [], ""
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k != "PYAPP_GREETING_KEY"}
        env["ORCH_HOME"] = os.path.join(tmp, "home")
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        for _ in range(args.rounds):
            t0 = time.monotonic()
            proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "apply", "examples/python-app"],
                                  cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
            times.append(time.monotonic() - t0)
            first = proc.stderr.strip().splitlines()[0] if proc.stderr.strip() else ""
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        built = os.path.exists(env["ORCH_HOME"])
    cpu = (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) / args.rounds
    print(f"orch apply examples/python-app (PYAPP_GREETING_KEY unset), {args.rounds} rounds:")
    print(f"  wall: median {statistics.median(times):.2f} s, worst {max(times):.2f} s; "
          f"cpu (user+sys): {cpu:.2f} s a run; exit {proc.returncode}; load average {os.getloadavg()[0]:.1f}")
    print(f"  {first}")
    print(f"  anything built: {'YES' if built else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
