"""`orch status [DIR]`: per host and service, the running release, slot, health and since when;
hosts that lag the newest release are shown as pending it, since it first served (fleet/lag.py)."""
from __future__ import annotations

from orchestrator.commands._common import add_source_arguments, parse_vars, print_json

HELP = "show per host and service: release, slot, state, health, since"
EXAMPLES = (
    'orch status manifests/',
    'orch status examples/canary --json',
)


def add_arguments(parser) -> None:
    add_source_arguments(parser)


def run(args) -> int:
    from orchestrator.fleet.deploy import open_fleet

    fleet = open_fleet(args.directory, parse_vars(args.var))
    with fleet.pool:
        views, errors = fleet.views()          # a read: installs nothing, takes no lock
    answers = {h: v.answer["status"] for h, v in views.items() if v.answer}
    rows = []
    for host in fleet.hosts:
        err = errors.get(host.name) or (None if host.name in answers else "agent not installed")
        if err:
            rows.append({"host": host.name, "error": str(err)})
            continue
        for name, s in sorted((answers[host.name].get("services") or {}).items()):
            rows.append({"host": host.name, "service": name, "release": s.get("release"), "slot": s.get("slot"),
                         "state": s.get("state"), "health": s.get("health"), "since": s.get("since"),
                         "previous": s.get("previous"), "error": s.get("error")})
    from orchestrator.fleet.lag import plan_lag
    lags = plan_lag(rows)
    for r in rows:
        if "service" in r:
            lag = lags.get((r["host"], r["service"]))
            r["pending"] = {"release": lag.release, "since": lag.since} if lag else None
    if args.json:
        print_json(rows)
    else:
        print(f"{'HOST':<14} {'SERVICE':<14} {'RELEASE':<20} {'SLOT':<6} {'STATE':<9} {'HEALTH':<9} SINCE")
        for r in rows:
            if "service" not in r:
                print(f"{r['host']:<14} {'' if r['error'] == 'agent not installed' else 'UNREACHABLE: '}{r['error']}")
                continue
            pending = r["pending"]
            print(f"{r['host']:<14} {r['service']:<14} {str(r['release']):<20} {str(r['slot']):<6} "
                  f"{str(r['state']):<9} {str(r['health']):<9} {_when(r['since'])}"
                  + (f"  PENDING {pending['release']} since {_when(pending['since'])}" if pending else ""))
    return 1 if errors else 0


def _when(since) -> str:
    import time
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(since))) if since else "-"
