"""`orch volumes [DIR]`: every volume on the fleet's hosts, the service that owns it, its size."""
from __future__ import annotations

from orchestrator.commands._common import add_source_arguments, parse_vars, print_json

HELP = "list each host's volumes: owner service (or shared), size, path"
EXAMPLES = (
    'orch volumes examples/counter',
    'orch volumes manifests/ --json',
)


def add_arguments(parser) -> None:
    add_source_arguments(parser)


def run(args) -> int:
    from orchestrator.fleet.deploy import open_fleet
    from orchestrator.fleet.report import human_bytes
    from orchestrator.transport.fanout import fan_out

    fleet = open_fleet(args.directory, parse_vars(args.var))
    with fleet.pool:
        clients, errors = fleet.clients()
        fan = fan_out(list(clients.items()), lambda kv: kv[1].volumes(), name=lambda kv: kv[0])
    rows = []
    for host in fleet.hosts:
        err = errors.get(host.name) or fan.failed.get(host.name)
        if err:
            rows.append({"host": host.name, "error": str(err)})
            continue
        rows += [dict(v, host=host.name) for v in fan.ok[host.name].get("volumes") or []]
    if args.json:
        print_json(rows)
    else:
        print(f"{'HOST':<14} {'SERVICE':<14} {'VOLUME':<16} {'SIZE':>10}  PATH")
        for r in rows:
            if "error" in r:
                print(f"{r['host']:<14} UNREACHABLE: {r['error']}")
                continue
            owner = r["service"] or ("(legacy)" if r.get("legacy") else "(shared)")
            print(f"{r['host']:<14} {owner:<14} {r['name']:<16} {human_bytes(r['bytes']):>10}  {r['path']}")
    return 1 if errors or fan.failed else 0
