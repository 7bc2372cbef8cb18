"""The platforms orch builds for and runs on: one table, read by the agent (which platform is
this host), the manifest loader (which platforms a manifest may name), the image builder (OCI
architecture and variant, Debian architecture) and the lab. Stdlib only (both sides import it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple


@dataclass(frozen=True)
class Platform:
    name: str                     # OCI platform string: linux/arm/v7
    arch: str                     # OCI architecture: arm
    variant: Optional[str]        # OCI variant: v7
    debian: str                   # Debian architecture: armhf
    machines: Tuple[str, ...]     # what `uname -m` says on such a host
    lab: str                      # the lab's word for such a host (`orch lab up --armv7 1`)


TABLE: Tuple[Platform, ...] = (
    Platform("linux/amd64", "amd64", None, "amd64", ("x86_64", "amd64"), "amd64"),
    Platform("linux/arm64", "arm64", None, "arm64", ("aarch64", "arm64"), "arm64"),
    Platform("linux/arm/v7", "arm", "v7", "armhf", ("armv7l",), "armv7"),
)
BY_NAME: Dict[str, Platform] = {p.name: p for p in TABLE}
NAMES: Tuple[str, ...] = tuple(p.name for p in TABLE)


def from_machine(machine: str) -> str:
    """`uname -m` -> platform name (``linux/<machine>`` for one orch does not know, e.g. armv6l,
    so it is refused by name rather than guessed)."""
    for p in TABLE:
        if machine in p.machines:
            return p.name
    return "linux/" + machine
