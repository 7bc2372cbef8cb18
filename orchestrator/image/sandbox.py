"""``run`` steps: a command executed in the image's filesystem inside a runc sandbox.

The parent layers are unpacked into a lower directory by the runtime's one safe unpacker
(``runtime.unpack``: the build machine is protected exactly as hosts are, with the same
refusals and budgets); an overlayfs (nosuid, nodev) puts an empty upper directory on top;
runc runs the command there with the config a container gets (``runtime.bundle``: own
pid/mount/ipc/uts/network namespaces, no network, no device, nothing of the build machine
mounted) plus a writable root and the build capabilities; the upper directory then *is* the
step's layer (overlay whiteouts become OCI ``.wh.`` markers). Everything lives under the
caller's work directory (0700), so no other user of the machine reaches a base's setuid files.

Foreign platforms run through qemu-user registered in binfmt_misc with the F flag
(registered here if missing), which is slower: ``emulated(platform)`` says when.
"""
from __future__ import annotations

import json
import os
import platform as _platform
import subprocess
from typing import Mapping, Optional, Sequence

from orchestrator.errors import BuildError
from orchestrator.image.store import Store
from orchestrator.tools import find_tool
from runtime import bundle as container_config, unpack
from runtime.errors import AgentFailure

BINFMT = "/proc/sys/fs/binfmt_misc"
QEMU = {"linux/arm64": "qemu-aarch64", "linux/arm/v7": "qemu-arm", "linux/amd64": "qemu-x86_64"}
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SANDBOX_MOUNTPOINTS = ("proc", "sys", "dev", "tmp")
BUDGET = unpack.Budget()     # the build machine's disk keeps the same reserve as a host's


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


def unpack_layers(store: Store, layers: Sequence[Mapping], target: str, image: str = "base") -> None:
    """Apply layers in order to a directory, through the runtime's safe unpacker: unsafe
    entries and bombs are refused with the image and layer named."""
    os.makedirs(target, exist_ok=True)
    try:
        unpack.apply_layers(target, layers, store.open_blob, BUDGET, image)
    except AgentFailure as exc:
        raise BuildError(exc.message) from None


def umount_quiet(path: str) -> None:
    """Detach a leftover build overlay (after an interrupted run step)."""
    if os.path.ismount(path):
        subprocess.run(["umount", "-l", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_in_sandbox(store: Store, layers: Sequence[Mapping], argv: Sequence[str], env: Sequence[str],
                   cwd: str, platform: str, workdir: str, name: str, timeout: float = 1800.0,
                   user: Optional[str] = None, image: str = "") -> str:
    """Run ``argv`` on top of ``layers``; returns the overlay upper directory (the changes).

    ``workdir`` must be the caller's own 0700 directory; the caller turns the upper directory
    into a layer and removes ``workdir``. ``image`` names the image in errors.
    """
    runc = find_tool("runc", "run steps at build time")
    ensure_binfmt(platform)
    os.chmod(workdir, 0o700)
    lower, upper, work = (os.path.join(workdir, d) for d in ("lower", "upper", "work"))
    bundle = os.path.join(workdir, "bundle")
    merged = os.path.join(bundle, "rootfs")
    for d in (lower, upper, work, merged):
        os.makedirs(d, exist_ok=True)
    unpack_layers(store, layers, lower, image or platform)
    from orchestrator.image.dockersteps import root_owner
    uid, gid = root_owner(lower, user)
    opts = f"nosuid,nodev,lowerdir={lower},upperdir={upper},workdir={work}"
    mount = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, merged],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if mount.returncode != 0:
        raise BuildError(f"cannot mount the build overlay: {mount.stderr.decode(errors='replace').strip()}")
    try:
        with open(os.path.join(bundle, "config.json"), "w") as fh:
            json.dump(container_config.render_build_config(argv, env, cwd, uid=uid, gid=gid,
                                                           machine=os.uname().machine), fh)
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
