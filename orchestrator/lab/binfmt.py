"""qemu-user in binfmt_misc, so arm binaries run on an x86 lab host (and inside containers there).

Entries need the F (fix-binary) flag: the kernel opens the interpreter at registration, so it
works inside other mount namespaces and container root filesystems.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import List, Optional

from orchestrator.errors import LabError
from orchestrator.tools import find_tool

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
CONF_DIRS = (Path("/usr/lib/binfmt.d"), Path("/etc/binfmt.d"))
OUR_PREFIX = "orch-qemu-"


def ensure_mounted() -> None:
    if (BINFMT_DIR / "register").exists():
        return
    proc = subprocess.run([find_tool("mount"), "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)],
                          capture_output=True, text=True)
    if proc.returncode != 0 and not (BINFMT_DIR / "register").exists():
        raise LabError(f"cannot mount binfmt_misc: {proc.stderr.strip()}")


def _entry(name: str) -> Optional[dict]:
    path = BINFMT_DIR / name
    if not path.exists():
        return None
    fields = {}
    for line in path.read_text().splitlines():
        if line in ("enabled", "disabled"):
            fields["enabled"] = line == "enabled"
        elif " " in line:
            key, _, value = line.partition(" ")
            fields[key.rstrip(":")] = value
    return fields


def _conf_line(arch: str) -> str:
    for d in CONF_DIRS:
        conf = d / f"qemu-{arch}.conf"
        if conf.exists():
            return conf.read_text().strip()
    raise LabError(f"no binfmt definition for qemu-{arch}",
                   hint="install it with: apt-get install qemu-user-static")


def registered_with_fix_binary(arch: str) -> Optional[str]:
    """Name of an enabled entry for `arch` that has the F flag, if any."""
    for name in (f"qemu-{arch}", f"{OUR_PREFIX}{arch}"):
        entry = _entry(name)
        if entry and entry.get("enabled") and "F" in entry.get("flags", ""):
            return name
    return None


def ensure_qemu(arch: str) -> Optional[str]:
    """Make sure `arch` binaries run; returns the entry name if this call registered it."""
    ensure_mounted()
    if registered_with_fix_binary(arch):
        return None
    existing = _entry(f"qemu-{arch}")
    if existing and existing.get("enabled"):
        raise LabError(f"binfmt entry qemu-{arch} is registered without the F (fix-binary) flag",
                       hint=f"re-register it: echo -1 > {BINFMT_DIR}/qemu-{arch}; then run orch lab up again")
    # Debian's line: :qemu-aarch64:M::magic:mask:interpreter:flags -> our own name, flags with F
    parts = _conf_line(arch).split(":")
    if len(parts) < 8:
        raise LabError(f"unexpected binfmt definition for qemu-{arch}")
    parts[1] = f"{OUR_PREFIX}{arch}"
    if "F" not in parts[7]:
        parts[7] += "F"
    interpreter = parts[6]
    if not os.path.exists(interpreter):
        raise LabError(f"{interpreter} missing", hint="install it with: apt-get install qemu-user-static")
    try:
        (BINFMT_DIR / "register").write_text(":".join(parts))
    except OSError as exc:
        raise LabError(f"cannot register qemu-{arch} in binfmt_misc: {exc}") from exc
    return parts[1]


def remove(names: List[str]) -> None:
    for name in names:
        if not name.startswith(OUR_PREFIX):
            continue  # never remove an entry this lab did not make
        path = BINFMT_DIR / name
        if path.exists():
            path.write_text("-1")
