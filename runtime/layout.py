"""Where things live on a host, and atomic file writes.

``root`` (default /var/lib/orch) holds blobs/, images/, containers/, volumes/, state/;
``run`` (default /run/orch) holds what must vanish on reboot: runc state, secrets tmpfs,
the serve pidfile; ``etc`` (default /etc/orch) the host's own settings (agent.json).
Both state trees are root's alone (0700): unpacked images keep their setuid files and file
capabilities for the container, and no other user of the host can reach them.
"""
from __future__ import annotations

import json
import os
import secrets as _secrets
import stat
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Optional


@dataclass(frozen=True)
class Layout:
    """Where the agent keeps things. The paths are worked out once per layout (``cached_property``
    keeps each in the instance's own dict; the fields never change): the store's checks join
    them thousands of times a command."""
    root: str
    run: str
    etc: str = "/etc/orch"

    @cached_property
    def config(self) -> str:
        return os.path.join(self.etc, "agent.json")

    @cached_property
    def blobs(self) -> str:
        return os.path.join(self.root, "blobs", "sha256")

    @cached_property
    def incoming(self) -> str:
        return os.path.join(self.root, "blobs", "incoming")

    @cached_property
    def images(self) -> str:
        return os.path.join(self.root, "images")

    @cached_property
    def containers(self) -> str:
        return os.path.join(self.root, "containers")

    @cached_property
    def volumes(self) -> str:
        return os.path.join(self.root, "volumes")

    @cached_property
    def state(self) -> str:
        return os.path.join(self.root, "state")

    @cached_property
    def logs(self) -> str:
        return os.path.join(self.root, "logs")

    @cached_property
    def runc_root(self) -> str:
        return os.path.join(self.run, "runc")

    @cached_property
    def secrets(self) -> str:
        return os.path.join(self.run, "secrets")

    @cached_property
    def pidfile(self) -> str:
        return os.path.join(self.run, "serve.pid")

    def blob(self, hexdigest: str) -> str:
        return os.path.join(self.blobs, hexdigest)

    def ensure(self) -> None:
        for d in (self.blobs, self.incoming, self.images, self.containers, self.volumes,
                  self.state, self.logs, self.run, self.runc_root):
            os.makedirs(d, mode=0o700, exist_ok=True)
        for d in (self.root, os.path.dirname(self.blobs), self.blobs, self.incoming,
                  self.images, self.containers, self.volumes, self.state, self.logs, self.run):
            if os.stat(d).st_mode & 0o066:    # hosts made before this was the rule (0711,
                os.chmod(d, 0o700)              # search only, is what userns containers need)

    def read_host_id(self) -> Optional[str]:
        """The host id if one was made (reads never make one)."""
        try:
            with open(os.path.join(self.state, "host-id")) as f:
                return f.read().strip() or None
        except OSError:
            return None

    def host_id(self) -> str:
        """A random id kept per host, so container ids and cgroups never collide between
        hosts sharing one kernel."""
        path = os.path.join(self.state, "host-id")
        try:
            with open(path) as f:
                hid = f.read().strip()
            if hid:
                return hid
        except FileNotFoundError:
            pass
        hid = _secrets.token_hex(4)
        write_atomic(path, hid.encode() + b"\n", durable=True)
        return hid


def write_atomic(path: str, data: bytes, mode: int = 0o644, durable: bool = False) -> None:
    """tmp -> rename, atomic against a crash of the agent (kill -9 never tears a file).
    ``durable`` adds fsync of the file and its directory, for what must survive a power cut
    (the target, blobs). Bookkeeping of running containers does not need it: a power cut
    takes the containers with it, and the agent re-observes and converges after boot."""
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            view = memoryview(data)
            while view:                    # a short write (a full disk) is no success
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:                  # disk full, EIO, a signal: leave no temporary file
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if not durable:
        return
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_json(path: str, obj: Any, mode: int = 0o644, durable: bool = False) -> None:
    """Sorted, compact: json's C encoder (an indented dump is its pure-Python one, ~5x slower,
    and the agent writes state files many times per change; ``python3 -m json.tool`` reads).
    The bytes the file already holds, with its mode, are not written again (see ``holds``)."""
    data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    if not holds(path, data, mode, durable):
        write_atomic(path, data, mode, durable)


def holds(path: str, data: bytes, mode: int, durable: bool = False) -> bool:
    """Whether the regular file at ``path`` (not a link) already holds ``data`` with ``mode``:
    then nothing is written, no file made (each new one costs an inode and a rename, several
    per state file and change). ``durable``: it is synced as a write would be (cheap when it
    has nothing unwritten, the usual case)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)   # a FIFO: no wait
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != mode or st.st_size != len(data):
            return False
        if os.read(fd, len(data) + 1) != data:
            return False
        if durable:
            os.fsync(fd)
            dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        return True
    finally:
        os.close(fd)


def read_json(path: str, default: Any = None) -> Any:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return default
