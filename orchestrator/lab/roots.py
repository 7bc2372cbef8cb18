"""Debian root filesystems that booted lab hosts share, made once with mmdebstrap.

A root is named by its release, its Debian architecture (arm64 and armhf roots are made through
qemu-user in binfmt_misc, which the lab registers with the F flag) and a digest of what goes into
it (packages and the files the lab adds), kept under the lab state root's `.roots/`, and only
ever read by hosts: each host mounts its own overlay (its "disk") over it. mmdebstrap's output is
kept as a tar (`base-ARCH-RELEASE-DIGEST.tar`, keyed by the packages only), so a change to the
lab's own files costs an unpack, not another mmdebstrap: about a minute for amd64, many minutes
for an arm root, whose package scripts run under emulation.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Tuple

from orchestrator.errors import LabError

# What a booted host needs: an init, sshd, the agent's python3 and the tools it drives
# (tini: the containers' PID 1, runtime/pid1.py).
PACKAGES = ("systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "iproute2", "runc",
            "nftables", "procps", "tini")
RELEASES = ("bookworm", "bullseye")
# qemu-user translates only part of netlink: no netfilter (an emulated nft: "Unable to initialize
# Netlink socket: Protocol not supported") and no neighbour dump (an emulated `ip neigh flush`:
# "Cannot send dump request: Operation not supported"). So a foreign root takes the machine's own
# nftables, iproute2 and runc (the programs that drive the kernel's network, namespaces and
# cgroups for the agent), as Debian multiarch amd64 packages run natively. Everything else in the
# root, systemd, sshd, python3 and the agent, tini, and every container, is the root's own arch.
NATIVE_TOOLS = ("iproute2", "nftables", "runc")
NATIVE_ARCH = "amd64"        # the lab machine's; other roots run under qemu-user

# The lab machine's cgroups are hybrid and systemd-nspawn mounts the v1 controllers read-only:
# runc then cannot make a container's cgroup. A real Pi (cgroup v2, systemd) has them writable,
# so the lab root makes them writable at boot, before anything else starts.
CGROUPS_SCRIPT = """#!/bin/sh
# orch lab: make the cgroup controllers writable (systemd-nspawn mounts them read-only)
for c in /sys/fs/cgroup/*/; do
  mountpoint -q "$c" && mount -o remount,bind,rw "$c"
done
exit 0
"""
CGROUPS_UNIT = """[Unit]
Description=orch lab: writable cgroup controllers
DefaultDependencies=no
Before=sysinit.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/orch-lab-cgroups

[Install]
WantedBy=sysinit.target
"""
# Units a lab host has no use for: timers that would wake a host during a test, a console login.
MASKED_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer",
                "dpkg-db-backup.timer", "fstrim.timer", "console-getty.service",
                "systemd-timesyncd.service")
SSHD_DROPIN = """# orch lab host: only the key the lab generated for this host, keys only
HostKey /etc/ssh/ssh_host_ed25519_key
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UseDNS no
MaxSessions 128
MaxStartups 200:30:400
"""


# Under qemu-user, systemd cannot set up a unit's credentials (the new mount API it uses is not
# emulated): units with LoadCredential= fail with 243/CREDENTIALS and the host boots "degraded".
# The lab passes no credentials, so a foreign root drops them (an empty assignment resets the list).
CREDENTIAL_UNITS = ("procps", "systemd-firstboot", "systemd-sysctl", "systemd-sysusers",
                    "systemd-tmpfiles-clean", "systemd-tmpfiles-setup", "systemd-tmpfiles-setup-dev")
NO_CREDENTIALS_DROPIN = """# orch lab, emulated root: qemu-user cannot set up credentials; the lab passes none
[Service]
LoadCredential=
"""


def render_root_files(arch: str = NATIVE_ARCH) -> Dict[str, Tuple[str, int]]:
    """Files the lab adds to a root of Debian architecture `arch`: path -> (text, mode)."""
    files = {
        "usr/local/sbin/orch-lab-cgroups": (CGROUPS_SCRIPT, 0o755),
        "etc/systemd/system/orch-lab-cgroups.service": (CGROUPS_UNIT, 0o644),
        "etc/ssh/sshd_config.d/orch-lab.conf": (SSHD_DROPIN, 0o644),
    }
    if arch != NATIVE_ARCH:
        for unit in CREDENTIAL_UNITS:
            files[f"etc/systemd/system/{unit}.service.d/orch-lab-no-credentials.conf"] = \
                (NO_CREDENTIALS_DROPIN, 0o644)
    return files


def render_root_links() -> Dict[str, str]:
    """Symlinks the lab adds: enable the cgroups unit, mask what a lab host does not need."""
    links = {"etc/systemd/system/sysinit.target.wants/orch-lab-cgroups.service":
             "/etc/systemd/system/orch-lab-cgroups.service"}
    for unit in MASKED_UNITS:
        links[f"etc/systemd/system/{unit}"] = "/dev/null"
    return links


def packages(arch: str = NATIVE_ARCH) -> Tuple[str, ...]:
    """What mmdebstrap installs in a root of `arch` (`nftables:amd64` in a foreign one)."""
    if arch == NATIVE_ARCH:
        return PACKAGES
    return tuple(f"{p}:{NATIVE_ARCH}" if p in NATIVE_TOOLS else p for p in PACKAGES)


def base_key(release: str, arch: str = NATIVE_ARCH) -> str:
    """`base-arm64-bookworm-<12 hex>`: what mmdebstrap makes (release, architecture, packages)."""
    h = hashlib.sha256(f"{arch}/{release}".encode())
    for pkg in packages(arch):
        h.update(b"\0pkg " + pkg.encode())
    return f"base-{arch}-{release}-{h.hexdigest()[:12]}"


def root_key(release: str, arch: str = NATIVE_ARCH) -> str:
    """`bookworm-<12 hex>` (amd64) or `arm64-bookworm-<12 hex>`: changes whenever what goes into
    the root changes. A foreign root's name starts with its architecture, so it never matches
    another release's `bookworm-*` when old roots are pruned."""
    h = hashlib.sha256(release.encode())
    if arch != NATIVE_ARCH:
        h.update(b"\0arch " + arch.encode())
    for pkg in packages(arch):
        h.update(b"\0pkg " + pkg.encode())
    for path, (text, mode) in sorted(render_root_files(arch).items()):
        h.update(f"\0file {path} {mode:o}\0".encode() + text.encode())
    for path, target in sorted(render_root_links().items()):
        h.update(f"\0link {path} {target}".encode())
    return f"{release}-{h.hexdigest()[:12]}" if arch == NATIVE_ARCH else f"{arch}-{release}-{h.hexdigest()[:12]}"


def debian_mirror(sources_dir: Path = Path("/etc/apt/sources.list.d"),
                  sources_list: Path = Path("/etc/apt/sources.list")) -> str:
    """The machine's configured Debian mirror (main archive: no security suite needed)."""
    for path in sorted(sources_dir.glob("*.sources")) if sources_dir.is_dir() else []:
        for uri in re.findall(r"^URIs:\s*(\S+)", path.read_text(), re.M):
            if "security" not in uri:
                return uri
    if sources_list.exists():
        for line in sources_list.read_text().splitlines():
            fields = line.split()
            if len(fields) > 2 and fields[0] == "deb" and "security" not in line:
                return fields[2] if fields[1].startswith("[") else fields[1]
    return "http://deb.debian.org/debian"


def render_mmdebstrap_argv(mmdebstrap: str, release: str, target: Path, mirror: str,
                           arch: str = NATIVE_ARCH) -> List[str]:
    arches = arch if arch == NATIVE_ARCH else f"{arch},{NATIVE_ARCH}"
    return [mmdebstrap, "--quiet", "--variant=minbase", f"--architectures={arches}",
            "--include=" + ",".join(packages(arch)), release, str(target), f"deb {mirror} {release} main"]


def render_unpack_argv(tar: str, base: Path, target: Path) -> List[str]:
    return [tar, "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", str(base), "-C", str(target)]


# Making a root: amd64 about a minute; arm64/armhf run every package script under qemu-user
MMDEBSTRAP_TIMEOUT = {NATIVE_ARCH: 900}
FOREIGN_TIMEOUT = 3600


def _lock_name(arch: str, release: str) -> str:
    # amd64 keeps the lock every version of the lab has used, so two versions never make one root
    # at once; a slow arm root does not hold up an amd64 one
    return ".lock" if arch == NATIVE_ARCH else f".lock-{arch}-{release}"


def ensure_root(roots_dir: Path, release: str, arch: str = NATIVE_ARCH) -> Path:
    """The shared root for `release` on Debian architecture `arch`, made now if it is not there yet
    (one maker at a time). A foreign `arch` needs its qemu-user binfmt entry registered."""
    if release not in RELEASES:
        raise LabError(f"no lab root for Debian {release!r} (known: {', '.join(RELEASES)})")
    roots_dir.mkdir(parents=True, exist_ok=True)
    final = roots_dir / root_key(release, arch)
    if (final / "etc" / "os-release").exists():
        return final
    with open(roots_dir / _lock_name(arch, release), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "etc" / "os-release").exists():
            return final
        base = ensure_base(roots_dir, release, arch)
        tmp = roots_dir / (final.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        proc = subprocess.run(render_unpack_argv(shutil.which("tar") or "tar", base, tmp), capture_output=True)
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise LabError(f"cannot unpack {base.name}: {proc.stderr.decode(errors='replace').strip()[-400:]}")
        _customise(tmp, arch)
        os.replace(tmp, final)
        run_prune_roots(roots_dir, release, keep=final, arch=arch)
    return final


def ensure_base(roots_dir: Path, release: str, arch: str = NATIVE_ARCH) -> Path:
    """mmdebstrap's root for (release, arch) as a tar, made now if it is not there (the caller
    holds the root's lock)."""
    base = roots_dir / (base_key(release, arch) + ".tar")
    if base.exists():
        return base
    mmdebstrap = shutil.which("mmdebstrap")
    if not mmdebstrap:
        raise LabError("booted lab hosts need mmdebstrap", hint="apt-get install mmdebstrap")
    tmp = base.with_name(base.name + ".tmp.tar")
    proc = subprocess.run(render_mmdebstrap_argv(mmdebstrap, release, tmp, debian_mirror(), arch),
                          capture_output=True, timeout=MMDEBSTRAP_TIMEOUT.get(arch, FOREIGN_TIMEOUT))
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise LabError(f"mmdebstrap {release}/{arch} failed: {proc.stderr.decode(errors='replace').strip()[-400:]}")
    os.replace(tmp, base)
    for old in roots_dir.glob(f"base-{arch}-{release}-*.tar"):
        if old != base:
            old.unlink(missing_ok=True)
    return base


def run_prune_roots(roots_dir: Path, release: str, keep: Path, arch: str = NATIVE_ARCH) -> List[Path]:
    """Older roots of (`release`, `arch`) that no host's disk is mounted over any more (they changed)."""
    with open("/proc/self/mountinfo") as f:
        in_use = f.read()
    removed = []
    pattern = re.compile(rf"^{re.escape(root_key(release, arch).rsplit('-', 1)[0])}-[0-9a-f]{{12}}$")
    for old in roots_dir.iterdir():
        if old != keep and pattern.match(old.name) and old.is_dir() and f"lowerdir={old}," not in in_use:
            shutil.rmtree(old, ignore_errors=True)
            removed.append(old)
    return removed


def _customise(root: Path, arch: str) -> None:
    for key in (root / "etc" / "ssh").glob("ssh_host_*"):
        key.unlink()       # made by openssh-server's postinst: each host gets its own from the lab
    for rel, (text, mode) in render_root_files(arch).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.chmod(path, mode)
    for rel, target in render_root_links().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.exists():
            path.unlink()
        path.symlink_to(target)
