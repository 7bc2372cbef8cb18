"""Pure renderers of plans and outcomes, as text for people and as JSON-ready dicts for scripts."""
from __future__ import annotations

from typing import Dict, List

from orchestrator.fleet.planner import FleetPlan


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def plan_to_json(plan: FleetPlan) -> Dict:
    return {
        "up_to_date": plan.up_to_date,
        "hosts": [{
            "host": hp.host, "platform": hp.platform, "error": hp.error, "agent": hp.agent,
            "changes": [{"service": c.service, "from": c.old_release, "to": c.new_release, "manifest": c.manifest,
                         "stop_first": c.stop_first or None}
                        for c in hp.changes],
            "blobs": [{"digest": d, "size": s, "have": hp.resume.get(d, 0)} for d, s in hp.blobs],
            "bytes_to_send": hp.bytes_to_send,
            "removals": [r.service for r in hp.removals],
        } for hp in plan.hosts],
        "waves": [{"service": w.service, "number": w.number, "canary": w.canary, "hosts": list(w.hosts)}
                  for w in plan.waves],
    }


def render_plan(plan: FleetPlan) -> str:
    if plan.up_to_date:
        return f"up to date: {len(plan.hosts)} host(s) already run the desired releases"
    lines: List[str] = []
    for hp in plan.hosts:
        if hp.error:
            lines.append(f"{hp.host}: UNREACHABLE or unusable: {hp.error}")
            continue
        if hp.agent:
            lines.append(f"{hp.host} ({hp.platform}): apply would {hp.agent}")
        if not hp.changes and not hp.removals:
            if not hp.agent:
                lines.append(f"{hp.host} ({hp.platform}): up to date")
            continue
        lines.append(f"{hp.host} ({hp.platform}): {len(hp.blobs)} blob(s) to ship, {human_bytes(hp.bytes_to_send)}")
        for c in hp.changes:
            if c.old_release:
                how = f", stop-first: {c.stop_first}" if c.stop_first else ""
                lines.append(f"  ~ {c.service}: {c.old_release} -> {c.new_release} (replace container{how})")
            else:
                lines.append(f"  + {c.service}: install {c.new_release}")
        for r in hp.removals:
            lines.append(f"  - {r.service}: {r.release or '(not running)'} (remove: no longer in the manifests)")
        if hp.blobs:
            lines.append("    ships " + ", ".join(
                f"{d.split(':')[-1][:12]} ({human_bytes(size - hp.resume.get(d, 0))}"
                f"{', resumes' if hp.resume.get(d) else ''})" for d, size in hp.blobs))
    for w in plan.waves:
        kind = "canary" if w.canary else f"wave {w.number}"
        lines.append(f"{w.service} {kind}: {', '.join(w.hosts)}")
    return "\n".join(lines)
