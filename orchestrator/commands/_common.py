"""Arguments and helpers shared by the fleet commands (plan, apply, status, ...)."""
from __future__ import annotations

import json
import sys
from typing import Dict, List

from orchestrator.errors import UsageError


def add_source_arguments(parser, *, json_flag: bool = True) -> None:
    parser.add_argument("directory", nargs="?", default="manifests", help="manifests directory (default: manifests)")
    parser.add_argument("--var", action="append", default=[], metavar="K=V", help="template variable (repeatable)")
    if json_flag:
        parser.add_argument("--json", action="store_true", help="machine-readable output")


def parse_vars(items: List[str]) -> Dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--var {item!r}: expected K=V")
        out[key] = value
    return out


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def service_hosts(fleet, service: str, host, directory: str) -> List[str]:
    """The names of the hosts ``service`` goes to (only ``host`` when given); UsageError when
    the service is not in the manifests or does not go to that host."""
    from orchestrator.fleet.inventory import select_hosts

    svc = fleet.desired.services.get(service)
    if svc is None:
        raise UsageError(f"no service {service!r} in {directory}")
    names = [h.name for h in select_hosts(svc.deploy.hosts, fleet.hosts)]
    if host:
        if host not in names:
            raise UsageError(f"{service} does not run on {host!r} (hosts: {', '.join(names)})")
        names = [host]
    return names


def prepare_with_progress(args):
    """Load, build (with a progress display unless --json) and find the fleet's hosts."""
    import os
    from orchestrator.manifest.inputs import load_checked

    # a bad manifest or a missing input is reported before SSH, rich and the builder are imported
    desired = load_checked(args.directory, parse_vars(args.var), os.environ)
    from orchestrator.commands.build import BuildProgress
    from orchestrator.fleet.deploy import prepare

    if getattr(args, "json", False):
        return prepare(args.directory, parse_vars(args.var), desired=desired)
    with BuildProgress() as progress:
        return prepare(args.directory, parse_vars(args.var), progress=progress, desired=desired)
