"""Shared fixtures. `lab` is a real lab fleet (namespaces + sshd) made for this test session."""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import List, Sequence, Tuple

import pytest

from orchestrator.lab.fleet import LabHost, lab_hosts
from orchestrator.lab.layout import LabLayout, LabSpec
from orchestrator.lab.machine import LabMachine
from orchestrator.transport.ssh import ConnectionPool
from runtime import platforms

REPO = Path(__file__).resolve().parents[1]

# Fixtures that start real components (namespaces, sshd, runc, nftables, mmdebstrap, a registry).
# A test that uses any of them, directly or through other fixtures, is marked `lab` here, so
# `pytest -m "not lab"` is the fast path and no test has to remember its own mark.
LAB_FIXTURES = frozenset({"static_busybox", "debian_home", "registry", "auth_registry", "netns", "bullseye_root"})


def is_lab_fixture(name: str) -> bool:
    return name == "lab" or name.startswith("lab_") or name.endswith("_lab") or name in LAB_FIXTURES


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(is_lab_fixture(n) for n in getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.lab)


@pytest.fixture(scope="session")
def lab_root():
    """For tests that make labs of their own: they need root (network and mount namespaces)."""
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network and mount namespaces)")


class Lab:
    """A lab that is up: its hosts, and helpers to run commands and copy files over SSH."""

    def __init__(self, layout: LabLayout):
        self.layout = layout
        self.name = layout.name
        self.hosts: List[LabHost] = lab_hosts(layout)
        self.pool = ConnectionPool(h.target for h in self.hosts)

    def host(self, name: str) -> LabHost:
        return next(h for h in self.hosts if h.name == name)

    def by_platform(self, platform: str) -> List[LabHost]:
        return [h for h in self.hosts if h.platform == platform]

    def run(self, host: LabHost, argv: Sequence[str], input: bytes = b"",
            timeout: float = 120) -> Tuple[int, bytes, bytes]:
        res = self.pool.get(host.name).run(list(argv), input=input, timeout=timeout)
        return res.exit_code, res.stdout, res.stderr

    def put(self, host: LabHost, local_path, remote_path: str, mode: int = 0o644) -> None:
        self.pool.get(host.name).put_file(str(local_path), remote_path, mode)


def make_lab(name: str, **counts) -> Lab:
    spec = LabSpec(name=name, **counts).validate()
    layout = LabLayout(spec)
    LabMachine(layout).up()
    return Lab(layout)


def remove_lab(lab: Lab) -> None:
    lab.pool.close()
    LabMachine(lab.layout).down()


@contextlib.contextmanager
def own_lab(prefix: str, **counts):
    """A lab of its own for a test module or session, named PREFIX-XXXX, removed afterwards."""
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network and mount namespaces)")
    the_lab = make_lab(f"{prefix}-{secrets.token_hex(2)}", **counts)
    try:
        yield the_lab
    finally:
        remove_lab(the_lab)


@contextlib.contextmanager
def fleet_lab_home(lab_name: str, home) -> None:
    """ORCH_HOME set to ``home`` while a test module drives `orch` against a lab fleet named
    ``lab_name`` (that the first apply brings up); afterwards the lab is down and ORCH_HOME is
    what it was."""
    from orchestrator.lab.layout import LabLayout, LabSpec
    from orchestrator.lab.machine import LabMachine

    old_home = os.environ.get("ORCH_HOME")
    os.environ["ORCH_HOME"] = str(home)
    try:
        yield
    finally:
        LabMachine(LabLayout(LabSpec(lab_name))).down()
        if old_home is None:
            os.environ.pop("ORCH_HOME", None)
        else:
            os.environ["ORCH_HOME"] = old_home


@pytest.fixture(scope="session")
def lab():
    """2 amd64 + 1 arm64 + 1 armv7 hosts, named test-XXXX so it never meets a person's lab."""
    with own_lab("test", amd64=2, arm64=1, armv7=1) as the_lab:
        yield the_lab


def _debian_mirror() -> str:
    """The machine's configured Debian mirror (main archive only: no security suite needed)."""
    import re
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for uri in re.findall(r"^URIs:\s*(\S+)", path.read_text(), re.M):
            if "security" not in uri:
                return uri
    for line in Path("/etc/apt/sources.list").read_text().splitlines() if Path("/etc/apt/sources.list").exists() else []:
        fields = line.split()
        if len(fields) > 1 and fields[0] == "deb" and "security" not in fields[1]:
            return fields[-3] if fields[1].startswith("[") else fields[1]
    return "http://deb.debian.org/debian"


DEBIAN_ARCH = {p.name: p.debian for p in platforms.TABLE}


@pytest.fixture(scope="session")
def static_busybox(tmp_path_factory):
    """A static busybox binary per platform, from Debian's busybox-static for that architecture
    (mmdebstrap --variant=extract: no target code runs). Returns {platform: Path}."""
    import subprocess
    import tarfile

    cache = Path(os.environ.get("ORCH_TEST_CACHE", Path.home() / ".cache" / "orch-test"))
    cache.mkdir(parents=True, exist_ok=True)
    out = {}
    for platform, arch in DEBIAN_ARCH.items():
        binary = cache / f"busybox-{arch}"
        if not binary.exists():
            work = tmp_path_factory.mktemp(f"bb-{arch}")
            tar_path = work / "root.tar"
            subprocess.run(["mmdebstrap", "--quiet", "--variant=extract", f"--arch={arch}",
                            "--include=busybox-static", "bookworm", str(tar_path),
                            f"deb {_debian_mirror()} bookworm main"], check=True)
            with tarfile.open(tar_path) as tar:
                member = tar.getmember("./bin/busybox")
                data = tar.extractfile(member).read()
            tmp = binary.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.chmod(0o755)
            tmp.replace(binary)
        out[platform] = binary
    return out
