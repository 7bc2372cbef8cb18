#!/usr/bin/env python3
"""How fast hostile manifests (YAML bombs, Jinja2 escapes and bombs) are refused, and how
long a legitimate large one takes to load.

    .venv/bin/python bench/manifest_limits.py [--rounds 3]

Each bomb of tests/manifest/test_limits.py is written to a temporary directory and loaded
in this process; the figure is the best of the rounds, with the message it was refused with.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.errors import ManifestError  # noqa: E402
from orchestrator.manifest import load_desired  # noqa: E402
from tests.manifest.test_limits import BOMBS, service  # noqa: E402
from tests.manifest.test_templates import BOMBS as TEMPLATE_BOMBS, ESCAPES, manifest  # noqa: E402


def time_load(text: str, rounds: int):
    best, outcome = None, ""
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "m.yaml").write_text(text)
        for _ in range(rounds):
            start = time.perf_counter()
            try:
                load_desired(tmp, {})
                outcome = "loaded"
            except ManifestError as exc:
                outcome = str(exc).replace(os.path.join(tmp, ""), "")
            took = time.perf_counter() - start
            best = took if best is None else min(best, took)
    return best, outcome


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(f"{'case':<28} {'bytes':>9} {'seconds':>8}  outcome")
    cases = dict((name, text) for name, (text, _, _) in BOMBS.items())
    cases["legit 200 hosts"] = "kind: Fleet\nname: f\nhosts:\n" + "".join(
        f"  - {{name: h{i}, address: 10.0.{i // 250}.{i % 250 + 1}, user: pi, labels: {{role: web}}}}\n"
        for i in range(200)) + "---\n" + service("deploy: {ports: ['8080:80']}\n")
    for name, expression in list(ESCAPES.items()) + list(TEMPLATE_BOMBS.items()):
        cases[f"jinja: {name}"] = manifest(expression)
    for name, text in cases.items():
        took, outcome = time_load(text, args.rounds)
        print(f"{name:<28} {len(text.encode()):>9} {took:>8.3f}  {outcome[:100]}")
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB")


if __name__ == "__main__":
    main()
