"""A lab seen as a fleet: SSH targets for its hosts (used by `orch apply` and the tests)."""
from __future__ import annotations

from typing import List

from orchestrator.lab.layout import HostLayout, LabLayout
from orchestrator.transport.ssh import SSHTarget
from runtime.records import Record, record


@record
class LabHost(Record):
    name: str
    address: str
    ssh_port: int
    user: str
    key_path: str
    known_hosts_path: str
    platform: str
    netns: str

    @property
    def target(self) -> SSHTarget:
        return SSHTarget(name=self.name, address=self.address, port=self.ssh_port, user=self.user,
                         key_path=self.key_path, known_hosts=self.known_hosts_path)


def lab_hosts(layout: LabLayout) -> List[LabHost]:
    return [_host(layout, h) for h in layout.hosts()]


def _host(layout: LabLayout, h: HostLayout) -> LabHost:
    return LabHost(name=h.name, address=h.address, ssh_port=h.ssh_port, user="root",
                   key_path=str(layout.user_key), known_hosts_path=str(layout.known_hosts),
                   platform=h.platform, netns=h.netns)
