"""`orch hosts [DIR]`: every host of the fleet with its platform, agent, reachability and free disk."""
from __future__ import annotations

from orchestrator.commands._common import add_source_arguments, parse_vars, print_json

HELP = "list the fleet's hosts: platform, agent version, runtime, reachable, free disk"
EXAMPLES = (
    'orch hosts manifests/',
    'orch hosts examples/pi-fleet --json',
)


def add_arguments(parser) -> None:
    add_source_arguments(parser)


def run(args) -> int:
    from orchestrator.fleet.deploy import open_fleet
    from orchestrator.fleet.report import human_bytes

    fleet = open_fleet(args.directory, parse_vars(args.var))
    with fleet.pool:
        views, errors = fleet.views()          # a read: installs nothing, takes no lock
        infos = {h: v.answer["info"] for h, v in views.items() if v.answer}
    rows = []
    for host in fleet.hosts:
        info = infos.get(host.name)
        view = views.get(host.name)
        rows.append({"host": host.name, "address": host.target.address, "reachable": view is not None,
                     "agent_installed": view is not None and view.agent == "current",
                     "platform": (info or {}).get("platform") or (view.platform if view else None) or host.platform,
                     "agent": (info or {}).get("agent_digest"), "runtime": (info or {}).get("runtime"),
                     "free_disk": (info or {}).get("free_disk"), "free_memory": (info or {}).get("free_memory"),
                     "error": str(errors[host.name]) if host.name in errors else None})
    if args.json:
        print_json(rows)
    else:
        print(f"{'HOST':<14} {'ADDRESS':<16} {'PLATFORM':<13} {'RUNTIME':<8} {'FREE DISK':<10} AGENT")
        for r in rows:
            if not r["reachable"]:
                print(f"{r['host']:<14} {r['address']:<16} UNREACHABLE: {r['error']}")
                continue
            if not r["agent"]:
                print(f"{r['host']:<14} {r['address']:<16} {r['platform'] or '-':<13} agent not installed "
                      "(orch apply installs it)")
                continue
            print(f"{r['host']:<14} {r['address']:<16} {r['platform']:<13} {r['runtime'] or '-':<8} "
                  f"{human_bytes(r['free_disk'] or 0):<10} {(r['agent'] or '')[:19]}")
    return 1 if errors else 0
