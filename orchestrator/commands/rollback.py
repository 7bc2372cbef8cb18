"""`orch rollback SERVICE [--to RELEASE]`: put the previous (or a named) release back on every host."""
from __future__ import annotations

from orchestrator.commands._common import add_source_arguments, parse_vars, print_json

HELP = "roll a service back to its previous release (kept on the hosts), or to --to RELEASE"
EXAMPLES = (
    'orch rollback hello manifests/',
    'orch rollback web examples/canary --to RELEASE_ID',
)


def add_arguments(parser) -> None:
    parser.add_argument("service")
    parser.add_argument("--to", default=None, metavar="RELEASE", help="release id (default: the previous one)")
    add_source_arguments(parser)


def run(args) -> int:
    from orchestrator.fleet.deploy import MAX_PARALLEL_HOSTS, open_fleet
    from orchestrator.fleet.lock import mutating, operator
    from orchestrator.errors import RolloutError, UsageError
    from orchestrator.transport.fanout import fan_out
    from orchestrator.fleet.inventory import select_hosts

    fleet = open_fleet(args.directory, parse_vars(args.var))
    service = fleet.desired.services.get(args.service)
    if service is None:
        raise UsageError(f"no service {args.service!r} in {args.directory} "
                         f"(services: {', '.join(fleet.desired.services) or 'none'})")
    names = [h.name for h in select_hosts(service.deploy.hosts, fleet.hosts)]
    who = operator()
    with fleet.pool:
        clients, errors = fleet.clients()            # the whole fleet: the lock is the fleet's
        with mutating(clients, who) as lock:
            errors.update(lock.lost)
            held = {h: c for h, c in lock.clients.items() if h in names}
            fan = fan_out(list(held.items()),
                          lambda kv: kv[1].rollback(args.service, args.to, who=who, lock=lock.token),
                          name=lambda kv: kv[0], max_parallel=MAX_PARALLEL_HOSTS)
    rows = {h: (fan.ok.get(h, {}).get("services") or {}).get(args.service) or {"ok": False, "error": str(
        errors.get(h) or fan.failed.get(h))} for h in names}
    if args.json:
        print_json(rows)
    else:
        for h, r in rows.items():
            print(f"{h:<14} {'ok ' + str(r.get('release')) if r.get('ok') else 'FAILED: ' + str(r.get('error'))}")
    if not all(r.get("ok") for r in rows.values()):
        raise RolloutError(f"rollback of {args.service} failed on "
                           f"{', '.join(h for h, r in rows.items() if not r.get('ok'))}")
    return 0
