"""`orch exec SERVICE [DIR] [--host H] -- CMD...`: run a command in the service's serving
container, interactively (with a terminal) when this terminal has one; exits with its code."""
from __future__ import annotations

import sys

from orchestrator.commands._common import parse_vars, service_hosts

HELP = "run a command in a service's serving container (a terminal when you have one)"
EXAMPLES = (
    'orch exec hello manifests/ -- /bin/busybox cat /srv/www/index.html',
    'orch exec web examples/counter --host amd64-1 -- /usr/bin/python3',
)


def add_arguments(parser) -> None:
    parser.add_argument("service")
    parser.add_argument("directory", nargs="?", default="manifests", help="manifests directory (default: manifests)")
    parser.add_argument("--host", default=None, help="the host (default: the first one serving it)")
    parser.add_argument("--var", action="append", default=[], metavar="K=V", help="template variable (repeatable)")
    parser.add_argument("--no-tty", action="store_true", help="never allocate a terminal")
    parser.set_defaults(argv_after=[])    # the words after `--` (orchestrator/cli.py PASSTHROUGH)


def run(args) -> int:
    import subprocess

    from orchestrator.errors import UsageError
    from orchestrator.fleet.deploy import open_fleet

    command = list(args.argv_after)
    if not command:
        raise UsageError("nothing to run: orch exec SERVICE [DIR] -- CMD ...")
    fleet = open_fleet(args.directory, parse_vars(args.var))
    names = service_hosts(fleet, args.service, args.host, args.directory)
    tty = sys.stdin.isatty() and sys.stdout.isatty() and not args.no_tty
    with fleet.pool:
        views, errors = fleet.views(names)       # finds the agent; installs nothing
        serving = [h for h in names if h in views and views[h].client is not None
                   and ((views[h].answer or {}).get("status", {}).get("services", {})
                        .get(args.service, {}).get("state") == "running")]
        if not serving:
            raise UsageError(f"{args.service} is not serving on {', '.join(names)}"
                             + (f" ({'; '.join(f'{h}: {e}' for h, e in errors.items())})" if errors else ""))
        view = views[serving[0]]
        argv = view.client.argv("exec", args.service, *(["--tty"] if tty else []), "--", *command)
        ssh = view.client.conn.openssh_argv(argv)
        if ssh is None:       # a ProxyJump chain: paramiko, output at the end, no terminal
            res = view.client.conn.run(argv, timeout=None)
            sys.stdout.buffer.write(res.stdout)
            sys.stderr.buffer.write(res.stderr)
            return res.exit_code
        if tty:
            ssh = ["-t" if a == "-T" else a for a in ssh]
        return subprocess.call(ssh)
