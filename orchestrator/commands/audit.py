"""`orch audit [DIR]`: the append-only audit log of every host (who applied what, when)."""
from __future__ import annotations

import time

from orchestrator.commands._common import add_source_arguments, parse_vars, print_json

HELP = "show each host's append-only audit log (who, when, what release)"
EXAMPLES = (
    'orch audit manifests/',
    'orch audit examples/canary --json',
)


def add_arguments(parser) -> None:
    add_source_arguments(parser)


def run(args) -> int:
    from orchestrator.fleet.deploy import open_fleet
    from orchestrator.transport.fanout import fan_out

    fleet = open_fleet(args.directory, parse_vars(args.var))
    with fleet.pool:
        views, errors = fleet.views()          # a read: installs nothing, takes no lock
        errors.update({h: "agent not installed" for h, v in views.items() if v.client is None})
        clients = {h: v.client for h, v in views.items() if v.client is not None}
        fan = fan_out(list(clients.items()), lambda kv: kv[1].audit(), name=lambda kv: kv[0])
    rows = []
    for host, body in fan.ok.items():
        for entry in body.get("entries") or body.get("lines") or []:
            rows.append(dict(entry, host=host) if isinstance(entry, dict) else {"host": host, "line": entry})
    rows.sort(key=lambda r: float(r.get("when") or 0))
    if args.json:
        print_json(rows)
    else:
        for r in rows:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(r.get("when") or 0)))
            print(f"{when:<20} {r['host']:<14} {r.get('who', ''):<24} "
                  f"{r.get('action', '')} {r.get('service', '')} {r.get('release', '')}")
    return 1 if errors or fan.failed else 0
