"""`orch logs SERVICE [--host H] [--follow]`: the service's container output from its hosts."""
from __future__ import annotations

import sys

from orchestrator.commands._common import add_source_arguments, parse_vars, service_hosts

HELP = "print a service's logs from its hosts (--follow to stream)"
EXAMPLES = (
    'orch logs hello manifests/',
    'orch logs hello manifests/ --host amd64-1 --follow',
)


def add_arguments(parser) -> None:
    parser.add_argument("service")
    parser.add_argument("--host", default=None, help="only this host")
    parser.add_argument("--tail", type=int, default=100)
    parser.add_argument("--follow", "-f", action="store_true")
    add_source_arguments(parser, json_flag=False)


def run(args) -> int:
    from orchestrator.errors import UsageError
    from orchestrator.fleet.deploy import open_fleet

    fleet = open_fleet(args.directory, parse_vars(args.var))
    names = service_hosts(fleet, args.service, args.host, args.directory)
    if args.follow and len(names) != 1:
        raise UsageError("--follow needs one host: add --host H")
    with fleet.pool:
        views, errors = fleet.views(names)     # a read: installs nothing, takes no lock
        errors.update({h: "agent not installed" for h, v in views.items() if v.client is None})
        clients = {h: v.client for h, v in views.items() if v.client is not None}
        for name in names:
            if name in errors:
                print(f"== {name}: UNREACHABLE: {errors[name]}", file=sys.stderr)
                continue
            if args.follow:
                clients[name].follow_logs(args.service, lambda b: (sys.stdout.buffer.write(b), sys.stdout.flush()))
                continue
            if len(names) > 1:
                print(f"== {name}")
                sys.stdout.flush()
            sys.stdout.buffer.write(clients[name].logs(args.service, args.tail))
            sys.stdout.flush()
    return 1 if errors else 0
