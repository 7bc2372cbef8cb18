"""`orch plan [DIR]`: what `apply` would change on each host, touching nothing: no agent is
installed or restarted and no lock is taken; where the agent is missing or another one runs,
the plan says what apply would install."""
from __future__ import annotations

from orchestrator.commands._common import add_source_arguments, prepare_with_progress, print_json

HELP = "show, per host, what apply would change (releases, blobs and bytes to ship, containers replaced)"
EXAMPLES = (
    'orch plan manifests/',
    'orch plan examples/canary --var version=2 --json',
)


def add_arguments(parser) -> None:
    add_source_arguments(parser)


def run(args) -> int:
    prep = prepare_with_progress(args)     # inputs are checked before SSH is imported
    from orchestrator.fleet.deploy import observe
    from orchestrator.fleet.report import plan_to_json, render_plan
    from orchestrator.transport.ssh import ConnectionPool

    with ConnectionPool(h.target for h in prep.hosts) as pool:
        obs = observe(prep, pool, install=False)
    if args.json:
        print_json(plan_to_json(obs.plan))
    else:
        print(render_plan(obs.plan))
    return 0 if not obs.plan.failed_hosts else 1
