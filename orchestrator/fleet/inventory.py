"""The hosts of a fleet, as SSH targets with labels: a lab (brought up if it is not) or real hosts."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import field
from pathlib import Path
from typing import List, Mapping, Optional

from orchestrator.lab.fleet import lab_hosts
from orchestrator.lab.layout import DEFAULT_STATE_ROOT, LabLayout, lab_name
from orchestrator.lab.machine import LabMachine
from orchestrator.manifest.model import Fleet, HostSelector
from orchestrator.transport.ssh import SSHTarget, resolve_target
from runtime.records import Record, record


@record
class InventoryHost(Record):
    name: str
    target: SSHTarget
    labels: Mapping[str, str] = field(default_factory=dict)
    platform: Optional[str] = None          # declared; otherwise the agent reports it


def lab_layout(fleet: Fleet, state_root: Path = DEFAULT_STATE_ROOT,
               environ: Optional[Mapping[str, str]] = None) -> LabLayout:
    spec = fleet.lab
    name = lab_name(fleet.name, os.environ if environ is None else environ)
    return LabLayout(dataclasses.replace(spec, name=name).validate(),
                     state_root)


def fleet_hosts(fleet: Fleet, *, bring_up_lab: bool = True, ssh_config: Optional[str] = None
                ) -> List[InventoryHost]:
    """Every host of the fleet. For a lab fleet, `bring_up_lab` makes sure the lab is up first."""
    if fleet.is_lab:
        layout = lab_layout(fleet)
        machine = LabMachine(layout)
        if bring_up_lab and not machine.ready():
            machine.up(report=False)
        return [InventoryHost(h.name, h.target, {"platform": h.platform}, h.platform) for h in lab_hosts(layout)]
    out = []
    for h in fleet.hosts:
        target = resolve_target(SSHTarget(name=h.name, address=h.address, port=h.port, user=h.user), ssh_config)
        out.append(InventoryHost(h.name, target, dict(h.labels), h.platform))
    return out


def host_vars(fleet: Fleet) -> dict:
    """The fleet's inventory as template data, ``hosts[NAME].address`` and friends, so one
    service can point at another on a different host without hard-coding addresses. Pure: a lab
    fleet's addresses come from its layout (the lab need not be up)."""
    if fleet.is_lab:
        return {h.name: {"name": h.name, "address": h.address, "port": 22, "user": "root",
                         "labels": {"platform": h.platform}, "platform": h.platform}
                for h in lab_layout(fleet).hosts()}
    return {h.name: {"name": h.name, "address": h.address, "port": h.port, "user": h.user,
                     "labels": dict(h.labels), "platform": h.platform} for h in fleet.hosts}


def select_hosts(selector: HostSelector, hosts: List[InventoryHost]) -> List[InventoryHost]:
    return [h for h in hosts if selector.matches(h.name, h.labels)]
