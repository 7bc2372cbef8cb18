"""``run`` steps: a command executed in the image's filesystem inside a runc sandbox.

The parent layers are unpacked once into a lower directory; an overlayfs puts an empty
upper directory on top; runc runs the command there (own pid/mount/ipc/uts/network
namespaces, no network, default capabilities, /tmp as tmpfs); the upper directory then *is*
the step's layer (overlay whiteouts become OCI ``.wh.`` markers).

Foreign platforms run through qemu-user registered in binfmt_misc with the F flag
(registered here if missing), which is slower: ``emulated(platform)`` says when.
"""
from __future__ import annotations

import gzip
import json
import os
import platform as _platform
import shutil
import subprocess
import tarfile
from typing import Dict, Mapping, Optional, Sequence

from orchestrator.errors import BuildError
from orchestrator.image.store import Store
from orchestrator.tools import find_tool

BINFMT = "/proc/sys/fs/binfmt_misc"
QEMU = {"linux/arm64": "qemu-aarch64", "linux/arm/v7": "qemu-arm", "linux/amd64": "qemu-x86_64"}
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SANDBOX_MOUNTPOINTS = ("proc", "sys", "dev", "tmp")
CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_SETGID",
        "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]


def host_platform() -> str:
    machine = _platform.machine()
    return {"x86_64": "linux/amd64", "aarch64": "linux/arm64", "armv7l": "linux/arm/v7"}.get(machine, machine)


def emulated(platform: str) -> bool:
    return platform != host_platform()


def ensure_binfmt(platform: str) -> None:
    """Make sure the kernel runs ``platform`` binaries through qemu-user (F flag)."""
    if not emulated(platform):
        return
    name = QEMU[platform]
    if not os.path.exists(os.path.join(BINFMT, "register")):
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", BINFMT], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not os.path.exists(os.path.join(BINFMT, "register")):
            raise BuildError(f"binfmt_misc is not available: cannot run {platform} code",
                             hint="mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc")
    entry = os.path.join(BINFMT, name)
    if os.path.exists(entry):
        with open(entry) as fh:
            text = fh.read()
        if text.startswith("enabled") and "flags:" in text and "F" in text.split("flags:")[1].split()[0]:
            return
        raise BuildError(f"binfmt_misc entry {name} exists without the F flag (or is disabled)",
                         hint=f"echo -1 > {entry} and retry, orch registers it with F")
    conf = f"/usr/lib/binfmt.d/{name}.conf"
    if not os.path.exists(conf):
        raise BuildError(f"no {conf}: cannot run {platform} code", hint="apt-get install qemu-user-static")
    with open(conf) as fh:
        line = fh.read().strip()
    try:
        with open(os.path.join(BINFMT, "register"), "w") as fh:
            fh.write(line)
    except OSError as exc:
        if not os.path.exists(entry):
            raise BuildError(f"cannot register {name} in binfmt_misc: {exc}") from None


def unpack_layers(store: Store, layers: Sequence[Mapping], target: str) -> None:
    """Apply layers in order to a directory (whiteouts delete, opaque dirs are emptied)."""
    os.makedirs(target, exist_ok=True)
    for layer in layers:
        with store.open_blob(layer["digest"]) as raw:
            magic = raw.read(2)
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw) if magic == b"\x1f\x8b" else raw
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                _apply(tar, target)


def _safe_join(root: str, name: str) -> Optional[str]:
    name = name.lstrip("/")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        return None
    return os.path.join(root, *parts) if parts else root


def _remove(path: str) -> None:
    if os.path.islink(path) or not os.path.isdir(path):
        if os.path.lexists(path):
            os.unlink(path)
    else:
        shutil.rmtree(path)


def _apply(tar: tarfile.TarFile, root: str) -> None:
    for member in tar:
        path = _safe_join(root, member.name)
        if path is None or path == root:
            continue
        parent, base = os.path.split(path)
        if not os.path.realpath(parent).startswith(os.path.realpath(root)):
            continue
        if base == ".wh..wh..opq":
            for child in os.listdir(parent) if os.path.isdir(parent) else ():
                _remove(os.path.join(parent, child))
            continue
        if base.startswith(".wh."):
            victim = os.path.join(parent, base[4:])
            if os.path.lexists(victim):
                _remove(victim)
            continue
        if os.path.lexists(path) and not (member.isdir() and os.path.isdir(path) and not os.path.islink(path)):
            _remove(path)
        os.makedirs(parent, exist_ok=True)
        if member.islnk():
            target = _safe_join(root, member.linkname)
            if target and os.path.exists(target):
                os.link(target, path)
            continue
        tar.extract(member, root, set_attrs=True, numeric_owner=True,
                    **({"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}))


def umount_quiet(path: str) -> None:
    """Detach a leftover build overlay (after an interrupted run step)."""
    if os.path.ismount(path):
        subprocess.run(["umount", "-l", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def runc_config(argv: Sequence[str], env: Sequence[str], cwd: str, hostname: str = "orch-build",
                uid: int = 0, gid: int = 0) -> Dict:
    """The OCI runtime config of a build sandbox (pure; tested as data)."""
    caps = list(CAPS)
    return {
        "ociVersion": "1.0.2",
        "process": {"terminal": False, "user": {"uid": uid, "gid": gid}, "args": list(argv),
                    "env": list(env), "cwd": cwd, "noNewPrivileges": True,
                    "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
                    "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]},
        "root": {"path": "rootfs", "readonly": False},
        "hostname": hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]},
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }


def run_in_sandbox(store: Store, layers: Sequence[Mapping], argv: Sequence[str], env: Sequence[str],
                   cwd: str, platform: str, workdir: str, name: str, timeout: float = 1800.0,
                   user: Optional[str] = None) -> str:
    """Run ``argv`` on top of ``layers``; returns the overlay upper directory (the changes).

    The caller turns the upper directory into a layer and removes ``workdir``.
    """
    runc = find_tool("runc", "run steps at build time")
    ensure_binfmt(platform)
    lower, upper, work = (os.path.join(workdir, d) for d in ("lower", "upper", "work"))
    bundle = os.path.join(workdir, "bundle")
    merged = os.path.join(bundle, "rootfs")
    for d in (lower, upper, work, merged):
        os.makedirs(d, exist_ok=True)
    unpack_layers(store, layers, lower)
    from orchestrator.image.dockersteps import root_owner
    uid, gid = root_owner(lower, user)
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
    mount = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, merged],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if mount.returncode != 0:
        raise BuildError(f"cannot mount the build overlay: {mount.stderr.decode(errors='replace').strip()}")
    try:
        with open(os.path.join(bundle, "config.json"), "w") as fh:
            json.dump(runc_config(argv, env, cwd, uid=uid, gid=gid), fh)
        state = os.path.join(workdir, "runc-state")
        try:
            proc = subprocess.run([runc, "--root", state, "run", "--bundle", bundle, name],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            subprocess.run([runc, "--root", state, "kill", name, "KILL"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            subprocess.run([runc, "--root", state, "delete", "--force", name], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            raise BuildError(f"run step timed out after {timeout:.0f}s: {' '.join(argv)}") from None
        if proc.returncode != 0:
            tail = proc.stdout.decode(errors="replace").strip().splitlines()[-15:]
            raise BuildError(f"run step failed (exit {proc.returncode}): {' '.join(argv)}"
                             + ("\n    " + "\n    ".join(tail) if tail else ""))
    finally:
        subprocess.run(["umount", merged], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return upper
