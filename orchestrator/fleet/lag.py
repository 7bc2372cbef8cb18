"""Which hosts lag a release: pure, from what the hosts report (`orch status`).

A host that was off or unreachable while a release went out keeps serving the one before: it
is *pending* the newer release, since the moment the first host started serving it. The newer
release of a service is the one most recently started on any host (a rollback counts: it is
what the fleet was last told to run). A host without the service at all is not counted: a
service may be meant for some hosts only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Sequence, Tuple


@dataclass(frozen=True)
class Lag:
    release: str        # the release the host should be running
    since: float        # when the first host started serving it


def plan_lag(rows: Sequence[Mapping]) -> Dict[Tuple[str, str], Lag]:
    """`rows` as `orch status` builds them (host, service, release, state, since); returns
    {(host, service): Lag} for every host serving an older release than the fleet's newest."""
    by_service: Dict[str, list] = {}
    for r in rows:
        if r.get("service") and r.get("release") and r.get("since") is not None:
            by_service.setdefault(r["service"], []).append(r)
    out: Dict[Tuple[str, str], Lag] = {}
    for service, group in by_service.items():
        running = [r for r in group if r.get("state") == "running"]
        if not running:
            continue
        newest = max(running, key=lambda r: float(r["since"]))["release"]
        since = min(float(r["since"]) for r in running if r["release"] == newest)
        for r in group:
            if r["release"] != newest:
                out[(r["host"], service)] = Lag(newest, since)
    return out
