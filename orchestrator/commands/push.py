"""`orch push SERVICE [REGISTRY/REPO[:TAG]] [DIR]`: build the service and push its image index."""
from __future__ import annotations

import os
import sys
from typing import Optional, Tuple

from orchestrator.commands._common import add_source_arguments, parse_vars, print_json

HELP = "push a service's multi-platform image to an OCI registry (only the blobs it lacks)"
EXAMPLES = (
    "orch push uwsgi 127.0.0.1:5000/demo/uwsgi:1 examples/uwsgi",
    "orch push uwsgi examples/uwsgi      # to the service's push: reference",
)


def add_arguments(parser) -> None:
    parser.add_argument("service")
    parser.add_argument("ref", nargs="?", metavar="REGISTRY/REPO[:TAG]",
                        help="where to push (default: the service's push: key)")
    add_source_arguments(parser)
    parser.add_argument("--insecure", action="store_true",
                        help="plain http to a registry that is not on loopback")


def looks_like_ref(text: str) -> bool:
    first, sep, _rest = text.partition("/")
    return bool(sep) and ("." in first or ":" in first or first == "localhost")


def split_ref_dir(ref: Optional[str], directory: str, default_dir: str = "manifests") -> Tuple[Optional[str], str]:
    """``orch push web examples/canary``: one word after SERVICE that is not a registry reference
    is the manifests directory (pure)."""
    if ref is not None and directory == default_dir and not looks_like_ref(ref) and os.path.isdir(ref):
        return None, ref
    return ref, directory


def run(args) -> int:
    from orchestrator.errors import UsageError
    from orchestrator.image import build_services
    from orchestrator.image.push import push_index
    from orchestrator.image.store import Store
    from orchestrator.manifest import load_desired

    ref, directory = split_ref_dir(args.ref, args.directory)
    desired = load_desired(directory, parse_vars(args.var))
    service = desired.services.get(args.service)
    if service is None:
        raise UsageError(f"no service {args.service!r} in {directory} "
                         f"(services: {', '.join(desired.services) or 'none'})")
    ref = ref or service.push
    if not ref:
        raise UsageError(f"where to? give REGISTRY/REPO[:TAG] or set push: on service {args.service}")
    store = Store.default()
    if args.json:
        built = build_services(desired, store, services=[args.service])[args.service]
    else:
        from orchestrator.commands.build import BuildProgress
        with BuildProgress() as progress:
            built = build_services(desired, store, services=[args.service], progress=progress)[args.service]

    def show(digest: str, n: int, total: int) -> None:
        if not args.json:
            print(f"  uploading {digest[:19]} ({n}/{total})", file=sys.stderr)
    report = push_index(store, built.index_digest, ref, insecure=args.insecure, progress=show)
    if args.json:
        print_json(report.to_json())
    else:
        print(f"{report.target}  {report.index}")
        print(f"  {report.manifests} platform manifests, {report.blobs} blobs: {report.sent} sent "
              f"({report.bytes_sent} bytes), {report.blobs - report.sent} already there")
    return 0
