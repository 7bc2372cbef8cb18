"""Lab hosts that boot: systemd as PID 1 under systemd-nspawn, in the host's network namespace.

A booted host's disk is an overlay (its own upper directory) over a Debian root the lab shares
(`orchestrator.lab.roots`); /run and /tmp are tmpfs inside it, so they die with its processes.
The lab machine has no systemd of its own: each host's nspawn runs in a cgroup of its own
(`orch-lab/<lab>/<host>` in the named systemd and unified hierarchies), because nspawn puts its
container beside itself and two hosts sharing one would see, and kill, each other's units.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set

from orchestrator.errors import LabError
from orchestrator.lab import roots
from orchestrator.lab.layout import HostLayout, LabLayout

# Hierarchies where nspawn places its container next to itself (the rest stay where they are).
NSPAWN_HIERARCHIES = ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified")
CGROUP_ROOT = "orch-lab"


def render_nspawn_argv(nspawn: str, host: HostLayout) -> List[str]:
    return [nspawn, "--quiet", "-D", str(host.rootfs), "-b", "--register=no", "--keep-unit",
            f"--network-namespace-path=/run/netns/{host.netns}", f"--machine={host.lab}-{host.name}",
            "--console=passive", "--link-journal=no", "--resolv-conf=off", "--timezone=off",
            # nspawn keeps CAP_NET_ADMIN only for networks it makes itself; the agent needs it
            # for its bridge, veths and nftables, as root on any host has it
            "--capability=CAP_NET_ADMIN",
            # runc makes a session keyring per container (keyctl), which nspawn's filter refuses
            "--system-call-filter=@keyring",
            # /var/lib/orch on the machine's own file system, like a Pi's ext4: the agent mounts
            # container overlays there, and an overlay's upper dir cannot be on an overlay
            f"--bind={host.var_lib_orch}:/var/lib/orch"]


def render_overlay_options(lower: Path, host: HostLayout) -> str:
    return f"lowerdir={lower},upperdir={host.upper_dir},workdir={host.work_dir}"


def cgroup_dirs(host: HostLayout) -> List[Path]:
    return [Path(h, CGROUP_ROOT, host.lab, host.name) for h in NSPAWN_HIERARCHIES if Path(h).is_dir()]


def host_files(host: HostLayout, host_key: str, host_key_pub: str, authorized_keys: str) -> Dict[str, tuple]:
    """What the lab writes on a host's disk before each boot: path -> (text, mode)."""
    return {
        "etc/hostname": (host.name + "\n", 0o644),
        "etc/ssh/ssh_host_ed25519_key": (host_key, 0o600),
        "etc/ssh/ssh_host_ed25519_key.pub": (host_key_pub, 0o644),
        "root/.ssh/authorized_keys": (authorized_keys, 0o600),
        "etc/orch/platform": (host.platform + "\n", 0o644),
        "etc/orch/hostname": (host.name + "\n", 0o644),
        "etc/systemd/journald.conf.d/orch-lab.conf": ("[Journal]\nSystemMaxUse=32M\n", 0o644),
    }


def is_mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def run_mount_disk(host: HostLayout, lower: Path) -> None:
    for d in (host.upper_dir, host.work_dir, host.rootfs):
        d.mkdir(parents=True, exist_ok=True)
    if is_mounted(host.rootfs):
        return
    proc = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", render_overlay_options(lower, host),
                           str(host.rootfs)], capture_output=True)
    if proc.returncode != 0:
        raise LabError(f"cannot mount the disk of lab host {host.name}: {proc.stderr.decode().strip()}")


def run_unmount_disk(host: HostLayout) -> None:
    if is_mounted(host.rootfs):
        subprocess.run(["umount", str(host.rootfs)], capture_output=True)
        if is_mounted(host.rootfs):
            subprocess.run(["umount", "-l", str(host.rootfs)], capture_output=True)


def write_host_files(host: HostLayout, files: Dict[str, tuple]) -> None:
    root = host.rootfs
    for rel, (text, mode) in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.startswith("root/.ssh/"):
            os.chmod(path.parent, 0o700)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)


def _enter_cgroups(dirs: Sequence[Path]) -> None:
    """Runs in the child between fork and exec: join the host's own cgroups."""
    for d in dirs:
        with open(d / "cgroup.procs", "w") as f:
            f.write("0\n")


def run_start(host: HostLayout, nspawn: str) -> int:
    """Boot the host (its disk mounted, its network namespace there); returns nspawn's pid."""
    dirs = cgroup_dirs(host)
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    # /proc/sys/net writable, as it is for networks nspawn makes itself (the agent sets ip_forward)
    env = dict(os.environ, SYSTEMD_NSPAWN_API_VFS_WRITABLE="network")
    with open(host.log_file, "ab") as log:
        proc = subprocess.Popen(render_nspawn_argv(nspawn, host), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=log, start_new_session=True, cwd="/", env=env,
                                preexec_fn=lambda: _enter_cgroups(dirs))
    return proc.pid


def _children(pid: int) -> List[int]:
    out: List[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def descendants(pid: int) -> List[int]:
    seen: List[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        for c in _children(p):
            if c not in seen:
                seen.append(c)
                todo.append(c)
    return seen


def leader_pid(nspawn_pid: int) -> Optional[int]:
    """The host's PID 1 (systemd), as seen from the lab machine."""
    kids = _children(nspawn_pid)
    return kids[0] if kids else None


def _container_cgroups(pids: Sequence[int]) -> Set[Path]:
    """Cgroups the containers of a host made (`/orch/...` paths), per controller directory."""
    out: Set[Path] = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in lines:
            _, controllers, path = line.split(":", 2)
            if "/orch/" not in path + "/":
                continue
            names = ["unified"] if controllers == "" else \
                [c.replace("name=", "") for c in controllers.split(",")] + [controllers]
            out.update(Path("/sys/fs/cgroup", name, path.lstrip("/")) for name in names)
    return out


def _rmdir_tree(top: Path) -> None:
    if not top.is_dir():
        return
    for dirpath, dirnames, _ in sorted(os.walk(top), key=lambda t: -len(t[0])):
        try:
            os.rmdir(dirpath)
        except OSError:
            pass


def run_power_off(host: HostLayout, nspawn_pid: Optional[int], timeout: float = 10.0) -> None:
    """Every process of the host killed at once (SIGKILL to its PID 1 takes its whole PID namespace,
    containers included), then the cgroups they leave behind removed. The disk is kept."""
    leader = leader_pid(nspawn_pid) if nspawn_pid else None
    pids = descendants(leader) + [leader] if leader else []
    cgroups = _container_cgroups(pids)
    for pid in ([leader] if leader else []) + ([nspawn_pid] if nspawn_pid else []):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    for pid in pids + ([nspawn_pid] if nspawn_pid else []):
        while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}") and not _zombie(pid):
            time.sleep(0.02)
    if nspawn_pid and _zombie(nspawn_pid):
        try:                      # our own child when the lab was made by this process
            os.waitpid(nspawn_pid, 0)
        except ChildProcessError:
            pass
    for cg in sorted(cgroups, key=lambda p: -len(str(p))):
        _rmdir_tree(cg)
    for d in cgroup_dirs(host):
        _rmdir_tree(d)
    run_unmount_disk(host)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def run_shutdown(nspawn_pid: int, timeout: float) -> bool:
    """An orderly shutdown: nspawn asks the host's systemd to power off (SIGTERM -> SIGRTMIN+3).
    True when it ended within `timeout`."""
    try:
        os.kill(nspawn_pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{nspawn_pid}") or _zombie(nspawn_pid):
            return True
        time.sleep(0.05)
    return False


BOOT_TIMEOUT = 60.0      # from nspawn's start to sshd answering, on a busy 2-core machine
BOOT_TIMEOUT_EMULATED = 300.0   # an arm host: systemd and every unit it starts run under qemu-user


def boot_timeout(host: HostLayout) -> float:
    return BOOT_TIMEOUT_EMULATED if host.emulated else BOOT_TIMEOUT


def run_boot(layout: LabLayout, host: HostLayout) -> int:
    """Mount the host's disk over its release's shared root, write what the lab gives it (hostname,
    its SSH host key, the lab's authorized key, its platform), boot it; returns nspawn's pid.
    The network namespace must already be there."""
    nspawn = shutil.which("systemd-nspawn")
    if not nspawn:
        raise LabError("booted lab hosts need systemd-nspawn", hint="apt-get install systemd-container")
    lower = roots.ensure_root(layout.roots_dir, host.os, host.debian_arch)
    run_mount_disk(host, lower)
    files = host_files(host, host.host_key.read_text(), host.host_key.with_suffix(".pub").read_text(),
                       layout.authorized_keys.read_text())
    write_host_files(host, files)
    return run_start(host, nspawn)


def run_remove_lab_cgroups(lab: str) -> None:
    """After every host of `lab` is off: its cgroup directories (and `orch-lab` when empty)."""
    for h in NSPAWN_HIERARCHIES:
        _rmdir_tree(Path(h, CGROUP_ROOT, lab))
        try:
            os.rmdir(Path(h, CGROUP_ROOT))
        except OSError:
            pass
