"""Hosts that lag a release, from the rows `orch status` reads (pure)."""
import pytest

from orchestrator.fleet.lag import Lag, plan_lag


def row(host, release, since, state="running", service="web"):
    return {"host": host, "service": service, "release": release, "since": since, "state": state}


CASES = [
    ("all on the same release", [row("a", "r2", 100), row("b", "r2", 105)], {}),
    ("one host missed the release", [row("a", "r2", 200), row("b", "r1", 100), row("c", "r2", 210)],
     {("b", "web"): Lag("r2", 200)}),
    ("a rollback is the newest", [row("a", "r1", 300), row("b", "r2", 200)], {("b", "web"): Lag("r1", 300)}),
    ("a stopped host still lags", [row("a", "r2", 200), row("b", "r1", 100, state="stopped")],
     {("b", "web"): Lag("r2", 200)}),
    ("services are apart", [row("a", "r2", 200), row("b", "r1", 100), row("a", "x1", 50, service="api"),
                            row("b", "x1", 60, service="api")], {("b", "web"): Lag("r2", 200)}),
    ("unreachable and unknown rows are ignored", [row("a", "r2", 200), {"host": "b", "error": "timed out"},
                                                  row("c", None, None)], {}),
    ("nothing running: nothing to compare", [row("a", "r2", 200, state="failed"), row("b", "r1", 100, state="failed")],
     {}),
]


@pytest.mark.parametrize("rows,want", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_lag(rows, want):
    assert plan_lag(rows) == want
