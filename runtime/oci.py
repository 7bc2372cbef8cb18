"""The OCI runtime driver: runc or crun, called with argument lists (never a shell).

``argv_*`` functions are pure and return the exact command; ``run_*`` execute them.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import List, Optional

from runtime.errors import RuntimeFailure


@dataclass(frozen=True)
class Runtime:
    name: str        # runc | crun
    binary: str
    root: str        # --root state dir

    def base(self) -> List[str]:
        return [self.binary, "--root", self.root]


def cgroup_mode(mountinfo: str) -> str:
    """``unified`` (cgroup v2 only), ``hybrid`` (v1 controllers + a v2 mount) or ``legacy``."""
    v1 = v2 = False
    for line in mountinfo.splitlines():
        fstype = line.partition(" - ")[2].split(" ", 1)[0]
        v1 = v1 or fstype == "cgroup"
        v2 = v2 or fstype == "cgroup2"
    if v2 and not v1:
        return "unified"
    if v1:
        return "hybrid" if v2 else "legacy"
    return "none"


def runtime_order(mode: str, prefer: str = "") -> List[str]:
    """crun is preferred (smaller, faster to start) except in hybrid mode, which it refuses
    ("cgroups in hybrid mode not supported"); runc is the fallback."""
    if prefer:
        return [prefer]
    return ["crun", "runc"] if mode in ("unified", "legacy") else ["runc", "crun"]


def runtime_named(name: str, run_dir: str) -> Runtime:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/bin")
    if not path:
        raise RuntimeFailure(f"{name} is not installed (apt-get install {name})")
    return Runtime(name, path, os.path.join(run_dir, name))


def choose_runtime(run_dir: str, prefer: Optional[str] = None) -> Runtime:
    """Detect the cgroup mode and pick a runtime that works in it. ``ORCH_RUNTIME`` forces
    one."""
    with open("/proc/self/mountinfo") as f:
        mode = cgroup_mode(f.read())
    if mode == "none":  # /sys remounted here (see cgroups.py): the machine's mode is init's
        try:
            with open("/proc/1/mountinfo") as f:
                mode = cgroup_mode(f.read())
        except OSError:
            pass
    for name in runtime_order(mode, prefer or os.environ.get("ORCH_RUNTIME") or ""):
        try:
            return runtime_named(name, run_dir)
        except RuntimeFailure:
            continue
    raise RuntimeFailure("no OCI runtime found (install the runc or crun package)")


def version(rt: Runtime) -> str:
    try:
        out = subprocess.run([rt.binary, "--version"], capture_output=True, text=True,
                             timeout=10).stdout
    except OSError:
        return ""
    first = out.splitlines()[0] if out else ""
    return first.split()[-1] if first else ""


def argv_create(rt: Runtime, cid: str, bundle: str, pidfile: str) -> List[str]:
    return rt.base() + ["create", "--bundle", bundle, "--pid-file", pidfile, cid]


def argv_start(rt: Runtime, cid: str) -> List[str]:
    return rt.base() + ["start", cid]


def argv_kill(rt: Runtime, cid: str, sig: str) -> List[str]:
    return rt.base() + ["kill", cid, sig]


def argv_delete(rt: Runtime, cid: str) -> List[str]:
    return rt.base() + ["delete", "--force", cid]


def argv_exec(rt: Runtime, cid: str, command: List[str]) -> List[str]:
    return rt.base() + ["exec", cid] + list(command)


def _run(argv: List[str], **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, **kw)
    except OSError as exc:
        raise RuntimeFailure(f"cannot run {argv[0]}: {exc}") from None


def run_create(rt: Runtime, cid: str, bundle: str, pidfile: str, log_path: str) -> int:
    """``create`` with the container's stdout/stderr on its log file; returns the init pid."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        # no timeout: with one, subprocess polls the child with sleeps of up to 50 ms
        p = _run(argv_create(rt, cid, bundle, pidfile), stdout=fd, stderr=fd)
    finally:
        os.close(fd)
    if p.returncode != 0:
        with open(log_path, "rb") as f:
            f.seek(start)
            msg = f.read(4000).decode(errors="replace").strip()
        raise RuntimeFailure(f"{rt.name} create {cid} failed: {msg[-1500:]}")
    with open(pidfile) as f:
        return int(f.read().strip())


def _checked(argv: List[str], what: str) -> None:
    p = _run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if p.returncode != 0:
        raise RuntimeFailure(f"{what} failed: {p.stderr.decode(errors='replace').strip()}")


def run_start(rt: Runtime, cid: str) -> None:
    _checked(argv_start(rt, cid), f"{rt.name} start {cid}")


def known(rt: Runtime, cid: str) -> bool:
    return os.path.isdir(os.path.join(rt.root, cid))


def proc_alive(pid: int, starttime: str = "") -> bool:
    """True while ``pid`` is alive (not a zombie) and, if given, has the same start time."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return False
    return not starttime or fields[19] == starttime


def proc_starttime(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return stat[stat.rindex(")") + 2:].split()[19]
    except (OSError, IndexError, ValueError):
        return ""


def stop_signal(image_config_signal: str) -> str:
    """The image's StopSignal ("SIGQUIT", "QUIT", "3") as runc/crun take it; TERM otherwise."""
    s = (image_config_signal or "").upper()
    if s.isdigit():
        try:
            return signal.Signals(int(s)).name[3:]
        except ValueError:
            return "TERM"
    s = s[3:] if s.startswith("SIG") else s
    return s if s and hasattr(signal, "SIG" + s) else "TERM"


def run_stop(rt: Runtime, cid: str, pid: int, starttime: str, timeout: float,
             sig: str = "TERM") -> None:
    """``sig`` (TERM), wait up to ``timeout``, KILL, then delete. Safe on a container already
    gone."""
    if known(rt, cid) and proc_alive(pid, starttime):
        _run(argv_kill(rt, cid, sig), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while proc_alive(pid, starttime) and time.monotonic() < deadline:
            time.sleep(0.01)
        if proc_alive(pid, starttime):
            _run(argv_kill(rt, cid, "KILL"), stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 5
            while proc_alive(pid, starttime) and time.monotonic() < deadline:
                time.sleep(0.01)
    if known(rt, cid):
        p = _run(argv_delete(rt, cid), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if p.returncode != 0 and known(rt, cid):
            raise RuntimeFailure(f"{rt.name} delete {cid} failed: "
                                 f"{p.stderr.decode(errors='replace').strip()}")


def run_exec(rt: Runtime, cid: str, command: List[str], timeout: float) -> int:
    try:
        p = subprocess.run(argv_exec(rt, cid, command), stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124
    return p.returncode


def signal_number(name: str) -> int:
    return int(getattr(signal, "SIG" + name))
