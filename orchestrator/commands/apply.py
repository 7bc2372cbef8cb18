"""`orch apply [DIR]`: build, plan, ship what each host lacks, and roll out (canary, waves)."""
from __future__ import annotations

import contextlib
import sys
import time
from typing import Dict

from orchestrator.commands._common import add_source_arguments, prepare_with_progress, print_json

HELP = "build, ship and roll out the manifests to the fleet (prints the plan first)"
EXAMPLES = (
    'orch apply manifests/',
    'orch apply examples/canary --var version=2',
)


def add_arguments(parser) -> None:
    add_source_arguments(parser)
    parser.add_argument("--force-unlock", action="store_true", help="break a stale fleet lock left by another apply")
    parser.add_argument("--host-timeout", type=float, default=60.0, metavar="SECONDS",
                        help="a host that does not answer is dropped and named after at most SECONDS "
                             "(default 60) plus, for each service it applies, its health retries, monitor, "
                             "drain, stop_timeout and a 3 s settle window; the rest of the fleet follows "
                             "on_failure, the lock is released")
    parser.add_argument("--allow-downgrade", action="store_true",
                        help="replace an agent newer than this orch (protocol or state schema) with this orch's")


def run(args) -> int:
    started = time.monotonic()
    prep = prepare_with_progress(args)     # inputs are checked before SSH is imported
    from orchestrator.fleet.deploy import apply, observe
    from orchestrator.errors import RolloutError
    from orchestrator.fleet.report import plan_to_json, render_plan
    from orchestrator.transport.ssh import ConnectionPool

    pool = ConnectionPool(h.target for h in prep.hosts)
    try:
        obs = observe(prep, pool, allow_downgrade=args.allow_downgrade)
        if not args.json:   # flushed: in a pipe the plan comes before the rollout lines (stderr)
            print(render_plan(obs.plan), flush=True)
        if obs.plan.up_to_date:
            if args.json:
                print_json({"plan": plan_to_json(obs.plan), "ok": True})
            return 0
        total = {hp.host: hp.bytes_to_send for hp in obs.plan.hosts if hp.blobs and not hp.error}
        with _display(args, total) as (on_bytes, on_event):
            report = apply(prep, obs, pool, force_unlock=args.force_unlock, host_timeout=args.host_timeout,
                           allow_downgrade=args.allow_downgrade, on_bytes=on_bytes, on_event=on_event)
    finally:
        pool.close(wait=False)      # the agents end on their own; the command need not wait
    summary = {
        "ok": report.ok,
        "plan": plan_to_json(report.plan),
        "shipped": {h: {"blobs": r.blobs, "bytes": r.bytes_sent, "attempts": r.attempts}
                    for h, r in report.shipped.items()},
        "ship_failed": report.ship_failed,
        "removed": report.removed,
        "remove_failed": report.remove_failed,
        "halted": report.rollout.halted if report.rollout else None,
        "outcomes": [o.__dict__ for o in (report.rollout.outcomes if report.rollout else [])],
        "hosts": report.final,
        "seconds": round(time.monotonic() - started, 2),
    }
    if args.json:
        print_json(summary)
    else:
        _print_summary(summary)
    if not report.ok:
        raise RolloutError("rollout incomplete: " + (summary["halted"] or
                           ", ".join(sorted(set(report.plan.failed_hosts) | set(report.ship_failed)
                                            | set(report.remove_failed)))
                           or "see the summary above"))
    return 0


# bars for transfers worth watching; smaller ones (a changed file or two) are over at once
PROGRESS_FROM = 1 << 20


@contextlib.contextmanager
def _display(args, total: Dict[str, int]):
    """(on_bytes, on_event) of a rollout: transfer bars (rich) on a terminal when at least
    PROGRESS_FROM bytes go out, else plain lines on stderr (and nothing with --json)."""
    if args.json:
        yield None, None
        return
    if sum(total.values()) < PROGRESS_FROM or not sys.stderr.isatty():
        yield None, lambda line: print(line, file=sys.stderr, flush=True)
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
    console = Console(stderr=True)
    with Progress(TextColumn("{task.description:<12}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=console, transient=True) as progress:
        tasks = {h: progress.add_task(h, total=n) for h, n in total.items()}
        yield (lambda h, n: progress.advance(tasks[h], n) if h in tasks else None), \
            (lambda line: console.print(line, markup=False, highlight=False))


def _print_summary(summary) -> None:
    for host, err in summary["ship_failed"].items():
        print(f"{host}: transfer failed: {err}")
    for key, err in summary["remove_failed"].items():
        print(f"{key}: removal failed: {err}")
    if summary["halted"]:
        print(f"halted: {summary['halted']}")
    print("now running:")
    for host, services in sorted(summary["hosts"].items()):
        print(f"  {host:<14} " + ", ".join(f"{s}={r or '(none)'}" for s, r in services.items()))
    sent = sum(s["bytes"] for s in summary["shipped"].values())
    print(f"{'done' if summary['ok'] else 'FAILED'} in {summary['seconds']} s, {sent} bytes shipped")
