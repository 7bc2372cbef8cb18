"""`orch remove SERVICE [DIR]`: stop a service and remove it from every host of the fleet that
runs it (its containers and published ports; its volumes stay), under the fleet lock."""
from __future__ import annotations

import sys

from orchestrator.commands._common import add_source_arguments, parse_vars, print_json

HELP = "remove a service from every host that runs it (volumes are kept)"
EXAMPLES = (
    'orch remove hello manifests/',
    'orch remove web examples/counter --json',
)


def add_arguments(parser) -> None:
    parser.add_argument("service")
    add_source_arguments(parser)


def run(args) -> int:
    from orchestrator.errors import RolloutError, UsageError
    from orchestrator.fleet.deploy import MAX_PARALLEL_HOSTS, open_fleet
    from orchestrator.fleet.lock import mutating, operator
    from orchestrator.transport.fanout import fan_out

    fleet = open_fleet(args.directory, parse_vars(args.var))
    project = fleet.desired.fleet.owner
    who = operator()
    with fleet.pool:
        views, unread = fleet.views()                 # where it runs: a read first
        running = {}
        for host, view in views.items():
            svc = ((view.answer or {}).get("status") or {}).get("services", {}).get(args.service)
            if svc is None:
                continue
            if svc.get("project") not in (None, project):
                raise UsageError(f"{args.service} on {host} belongs to project {svc['project']!r}, "
                                 f"not {project!r}: remove it from that project's manifests")
            running[host] = svc
        if not running:
            raise UsageError(f"{args.service} runs on no host of {args.directory}"
                             + (f" (unreachable: {', '.join(sorted(unread))})" if unread else ""))
        clients, errors = fleet.clients()             # the whole fleet: the lock is the fleet's
        with mutating(clients, who) as lock:
            errors.update(lock.lost)
            held = {h: c for h, c in lock.clients.items() if h in running}
            fan = fan_out(list(held.items()), lambda kv: kv[1].remove(args.service, who, lock=lock.token),
                          name=lambda kv: kv[0], max_parallel=MAX_PARALLEL_HOSTS)
    rows = {h: {"ok": h in fan.ok, "error": None if h in fan.ok else str(errors.get(h) or fan.failed.get(h))}
            for h in running}
    if args.json:
        print_json(rows)
    else:
        for h, r in rows.items():
            print(f"{h:<14} {'removed' if r['ok'] else 'FAILED: ' + r['error']}")
        if args.service in fleet.desired.services:
            print(f"note: {args.service} is still in {args.directory}: the next apply deploys it again",
                  file=sys.stderr)
    if not all(r["ok"] for r in rows.values()):
        raise RolloutError(f"removal of {args.service} failed on "
                           f"{', '.join(h for h, r in rows.items() if not r['ok'])}")
    return 0
