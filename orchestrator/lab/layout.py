"""Pure naming for a lab: namespaces, interfaces, addresses and paths derived from its name.

Nothing here touches the machine; `orchestrator.lab.machine` does, using these names.
Several labs stand side by side because every name and the subnet derive from the lab name.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

from orchestrator.errors import LabError
from runtime import platforms
from runtime.records import Record, record

# Plain host kinds: one per platform of the one platform table, by its lab word (amd64, arm64, armv7)
PLAIN_KINDS: Dict[str, str] = {p.lab: p.name for p in platforms.TABLE}
# Host kinds that boot a Debian root with systemd as PID 1 (systemd-nspawn): (lab word, release)
BOOTED_KINDS: Dict[str, Tuple[str, str]] = {
    "booted": ("amd64", "bookworm"), "bullseye": ("amd64", "bullseye"),
    "booted_arm64": ("arm64", "bookworm"), "booted_armv7": ("armv7", "bookworm")}
PLATFORMS: Dict[str, str] = dict(PLAIN_KINDS, **{k: PLAIN_KINDS[w] for k, (w, _) in BOOTED_KINDS.items()})
BOOTED_OS: Dict[str, str] = {k: release for k, (_, release) in BOOTED_KINDS.items()}
# LabSpec field names, in the order hosts get their addresses (new kinds go last: addresses stay)
HOST_KINDS: Tuple[str, ...] = tuple(PLAIN_KINDS) + tuple(BOOTED_KINDS)
# qemu-user binfmt entries needed per foreign platform (Debian's qemu-user-static names)
QEMU_FOR_PLATFORM = {"linux/arm64": "aarch64", "linux/arm/v7": "arm"}

_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,23}$")
_RATE_RE = re.compile(r"^[0-9]+(\.[0-9]+)?(bit|kbit|mbit|gbit|bps|kbps|mbps|gbps)$")
DEFAULT_STATE_ROOT = Path("/var/lib/orch-lab")
FIRST_HOST_OCTET = 10


def lab_name(name: str, environ: Mapping[str, str]) -> str:
    """The lab a fleet or `--name` stands for: ``$ORCH_LAB_PREFIX`` + name. A test or CI job sets
    the prefix so that the labs it makes, as written in the docs, never meet a person's labs."""
    return environ.get("ORCH_LAB_PREFIX", "") + name


@record
class LabSpec(Record):
    """How many hosts of each kind a lab has."""

    name: str = "lab"
    amd64: int = 2
    arm64: int = 1
    armv7: int = 0
    link_rate: Optional[str] = None
    booted: int = 0      # amd64 hosts booting Debian bookworm with systemd (PID 1) in their namespaces
    bullseye: int = 0    # the same with Debian bullseye (python3 3.9)
    booted_arm64: int = 0   # arm64 hosts booting bookworm (systemd and everything under qemu-user)
    booted_armv7: int = 0   # the same for 32-bit armv7 (Debian armhf)

    def validate(self) -> "LabSpec":
        if not _NAME_RE.match(self.name):
            raise LabError(f"lab name {self.name!r}: use 1-24 lowercase letters, digits or '-', starting with a letter")
        for kind in HOST_KINDS:
            count = getattr(self, kind)
            if count < 0 or count > 200:
                raise LabError(f"{kind_flag(kind)} {count}: expected 0..200")
        total = sum(getattr(self, kind) for kind in HOST_KINDS)
        if total == 0:
            raise LabError("a lab needs at least one host")
        if total > 240:
            raise LabError("a lab has at most 240 hosts (one /24)")
        if self.link_rate is not None and not _RATE_RE.match(self.link_rate):
            raise LabError(f"--link-rate {self.link_rate!r}: expected a tc rate such as 10mbit or 500kbit")
        return self


    def platforms(self) -> Tuple[str, ...]:
        """The platforms of this lab's hosts, in the platform table's order."""
        have = {PLATFORMS[kind] for kind in HOST_KINDS if getattr(self, kind)}
        return tuple(p.name for p in platforms.TABLE if p.name in have)


def kind_flag(kind: str) -> str:
    """`orch lab up`'s option for a host kind: --hosts (amd64), --arm64, --booted-arm64, ..."""
    return "--hosts" if kind == "amd64" else "--" + kind.replace("_", "-")


def kind_prefix(kind: str) -> str:
    """How a kind's hosts are named: amd64-1, booted-1, booted-arm64-1, ..."""
    return kind.replace("_", "-")


@record
class HostLayout(Record):
    """Every name and path of one lab host."""

    lab: str
    name: str            # e.g. "amd64-1"
    platform: str        # e.g. "linux/arm64"
    index: int           # 0-based position in the lab
    address: str
    netns: str
    veth_root: str       # end in the root namespace, enslaved to the lab bridge
    veth_host: str       # end inside the host namespace (renamed eth0 there)
    state_dir: Path      # on the machine: keys, sshd config, private dirs
    os: Optional[str] = None   # "bookworm"/"bullseye": boots that Debian root with systemd

    @property
    def booted(self) -> bool:
        return self.os is not None

    @property
    def debian_arch(self) -> str:
        """Debian's name for the host's architecture (its booted root is made for it)."""
        return platforms.BY_NAME[self.platform].debian

    @property
    def emulated(self) -> bool:
        """Its binaries run through qemu-user on this machine."""
        return self.platform in QEMU_FOR_PLATFORM

    @property
    def ssh_port(self) -> int:
        return 22

    @property
    def mac(self) -> str:
        """A fixed, locally administered MAC for eth0: a host that is switched off and on again keeps
        it, as a real one does, so the machine's ARP entry for the host stays right (a new MAC
        each boot leaves a REACHABLE entry pointing at the old one for up to 45 s)."""
        d = hashlib.sha256(f"orch-lab/{self.lab}/{self.name}".encode()).digest()
        return "02:" + ":".join(f"{b:02x}" for b in d[:5])

    @property
    def var_lib_orch(self) -> Path:
        return self.state_dir / "var-lib-orch"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def etc_orch(self) -> Path:
        return self.state_dir / "etc-orch"

    @property
    def root_home(self) -> Path:
        return self.state_dir / "root-home"

    @property
    def host_key(self) -> Path:
        return self.state_dir / "ssh_host_ed25519_key"

    @property
    def sshd_config(self) -> Path:
        return self.state_dir / "sshd_config"

    @property
    def pid_file(self) -> Path:
        """sshd's pid, or systemd-nspawn's for a booted host."""
        return self.state_dir / ("nspawn.pid" if self.booted else "sshd.pid")

    @property
    def log_file(self) -> Path:
        return self.state_dir / ("nspawn.log" if self.booted else "sshd.log")

    # a booted host's disk: its own overlay (upper/work) over the lab's shared root, mounted at rootfs
    @property
    def upper_dir(self) -> Path:
        return self.state_dir / "disk"

    @property
    def work_dir(self) -> Path:
        return self.state_dir / "disk-work"

    @property
    def rootfs(self) -> Path:
        return self.state_dir / "rootfs"


@record
class LabLayout(Record):
    spec: LabSpec
    state_root: Path = DEFAULT_STATE_ROOT

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def tag(self) -> str:
        """Six hex digits from the lab name: keeps interface names under 15 characters."""
        return hashlib.sha256(self.spec.name.encode()).hexdigest()[:6]

    @property
    def bridge(self) -> str:
        return f"orch-{self.tag}"

    @property
    def subnet_prefix(self) -> Tuple[int, int]:
        digest = hashlib.sha256(b"orch-lab/" + self.spec.name.encode()).digest()
        return (100 + digest[0] % 100, digest[1])

    @property
    def subnet(self) -> str:
        a, b = self.subnet_prefix
        return f"10.{a}.{b}.0/24"

    @property
    def gateway(self) -> str:
        a, b = self.subnet_prefix
        return f"10.{a}.{b}.1"

    @property
    def state_dir(self) -> Path:
        return self.state_root / self.spec.name

    @property
    def user_key(self) -> Path:
        return self.state_dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.state_dir / "known_hosts"

    @property
    def authorized_keys(self) -> Path:
        return self.state_dir / "authorized_keys"

    @property
    def record(self) -> Path:
        return self.state_dir / "lab.json"

    @property
    def roots_dir(self) -> Path:
        """Debian roots that booted hosts share (read-only lower layer), kept across labs."""
        return self.state_root / ".roots"

    def hosts(self) -> Tuple[HostLayout, ...]:
        a, b = self.subnet_prefix
        out = []
        kinds = [(kind, getattr(self.spec, kind)) for kind in HOST_KINDS]
        index = 0
        for kind, count in kinds:
            for n in range(1, count + 1):
                name = f"{kind_prefix(kind)}-{n}"
                out.append(HostLayout(
                    lab=self.spec.name,
                    name=name,
                    platform=PLATFORMS[kind],
                    index=index,
                    address=f"10.{a}.{b}.{FIRST_HOST_OCTET + index}",
                    netns=f"orch-{self.spec.name}-{name}",
                    veth_root=f"o{self.tag}r{index}",
                    veth_host=f"o{self.tag}h{index}",
                    state_dir=self.state_dir / "hosts" / name,
                    os=BOOTED_OS.get(kind),
                ))
                index += 1
        return tuple(out)

    def host(self, name: str) -> HostLayout:
        for h in self.hosts():
            if h.name == name:
                return h
        known = ", ".join(h.name for h in self.hosts())
        raise LabError(f"lab {self.spec.name!r} has no host {name!r} (hosts: {known})")

    def foreign_qemu(self) -> Tuple[str, ...]:
        """qemu-user binfmt entries this lab needs, e.g. ("aarch64",)."""
        return tuple(sorted({QEMU_FOR_PLATFORM[h.platform] for h in self.hosts() if h.platform in QEMU_FOR_PLATFORM}))
