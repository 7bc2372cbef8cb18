#!/usr/bin/env python3
"""Time a no-op command on N lab hosts over the pooled SSH transport.

    .venv/bin/python bench/fanout.py [--sizes 5,10,20] [--rounds 5]

Prints, per fleet size: connect time (first round, includes the SSH handshake), then the
median wall time of a no-op round on an already pooled connection, and seconds per host.
Makes its own lab (`bench-fanout`) and removes it afterwards.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.transport.fanout import fan_out  # noqa: E402
from orchestrator.lab.fleet import lab_hosts  # noqa: E402
from orchestrator.lab.layout import LabLayout, LabSpec  # noqa: E402
from orchestrator.lab.machine import LabMachine  # noqa: E402
from orchestrator.transport.ssh import ConnectionPool  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="5,10,20")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--parallel", type=int, default=32)
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    layout = LabLayout(LabSpec("bench-fanout", amd64=max(sizes), arm64=0))
    machine = LabMachine(layout)
    t0 = time.monotonic()
    machine.up()
    print(f"lab of {max(sizes)} hosts up in {time.monotonic() - t0:.2f} s")
    hosts = lab_hosts(layout)
    try:
        print(f"{'hosts':>5} {'connect+run s':>14} {'pooled run s':>13} {'s/host':>8}")
        for n in sizes:
            subset = hosts[:n]
            with ConnectionPool(h.target for h in subset) as pool:
                def noop(h):
                    res = pool.get(h.name).run(["true"])
                    if res.exit_code != 0:
                        raise RuntimeError(res.stderr)
                t = time.monotonic()
                first = fan_out(subset, noop, max_parallel=args.parallel)
                cold = time.monotonic() - t
                assert first.all_ok, first.failed
                walls = []
                for _ in range(args.rounds):
                    t = time.monotonic()
                    res = fan_out(subset, noop, max_parallel=args.parallel)
                    walls.append(time.monotonic() - t)
                    assert res.all_ok, res.failed
                med = statistics.median(walls)
                print(f"{n:>5} {cold:>14.3f} {med:>13.3f} {med / n:>8.4f}")
    finally:
        machine.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
