"""SSH transport (paramiko): strict host keys, ~/.ssh/config, pooled connections.

This is the one place a remote command line is built (`shlex.join` of an argument list).
Host keys are checked against known_hosts and never auto-accepted.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
from dataclasses import replace
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence

from orchestrator.errors import HostKeyError, TransportError
from runtime import door, protocol
from runtime.records import Record, record


class _OnFirstUse:
    """paramiko, imported on first attribute use: a command whose hosts are all reached through
    the OpenSSH client never pays its import. (Python's import lock makes threads that race
    here wait for one complete import; the stdlib LazyLoader does not, before 3.12.)"""

    def __getattr__(self, name: str):
        import paramiko as module
        return getattr(module, name)


paramiko = _OnFirstUse()

# Seconds an OpenSSH connection outlives the command that opened it (ControlPersist): the next
# command on the same host then costs no handshake. "0" or "no" turns it off; so does
# `ControlMaster no` or `ControlPersist no` for the host in ~/.ssh/config.
PERSIST_ENV = "ORCH_SSH_PERSIST"
DEFAULT_PERSIST = "60"
# Key exchange of the OpenSSH client: curve25519 first (what paramiko and OpenSSH 8 use). OpenSSH
# 9's default, the hybrid post-quantum sntrup761x25519, cost ~0.2 s of CPU per handshake on the
# 2-core machine orch is benched on (0.39 s against 0.16 s a connection), seconds for a cold
# fleet. ORCH_SSH_KEX=default keeps OpenSSH's own order; any other value is passed as
# KexAlgorithms (e.g. sntrup761x25519-sha512@openssh.com where recorded traffic must resist a
# future quantum computer).
KEX_ENV = "ORCH_SSH_KEX"
DEFAULT_KEX = "^curve25519-sha256"
# the door of the agent's `serve` on every host (runtime/door.py)
REMOTE_DOOR = door.path(protocol.DEFAULT_RUN)
DOOR_SUFFIX = ".door"
DOOR_TIMEOUT = 10.0             # seconds for the door to answer what it was asked
WINDOW = 64 * 1024 * 1024       # large SSH window: bulk transfers are not stalled by round trips
MAX_PACKET = 256 * 1024 - 1024  # below OpenSSH's 256 KiB packet limit


@record
class SSHTarget(Record):
    """Where and how to reach one host."""

    name: str
    address: str
    port: int = 22
    user: str = "root"
    key_path: Optional[str] = None
    known_hosts: Optional[str] = None          # None: ~/.ssh/known_hosts (and /etc/ssh/ssh_known_hosts)
    proxy_jump: Optional["SSHTarget"] = None
    connect_timeout: float = 10.0
    persist: bool = True                       # False: ~/.ssh/config says ControlMaster/ControlPersist no


@record
class CommandResult(Record):
    exit_code: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def resolve_target(target: SSHTarget, config_path: Optional[str] = None) -> SSHTarget:
    """Apply ~/.ssh/config (HostName, User, Port, IdentityFile, UserKnownHostsFile, ProxyJump).

    `Host` patterns may name the host as the manifest does or by its address; settings written
    in the manifest win over the config file, as options on an ssh command line would.
    """
    path = Path(config_path or os.path.expanduser("~/.ssh/config"))
    if not path.exists():
        return target
    config = paramiko.SSHConfig.from_path(str(path))
    found = dict(config.lookup(target.address))
    found.pop("hostname", None)
    by_name = config.lookup(target.name)
    found.update(by_name)
    changes: dict = {}
    if by_name.get("hostname") not in (None, target.name):
        changes["address"] = by_name["hostname"]
    if "user" in found and target.user == "root":
        changes["user"] = found["user"]
    if "port" in found and target.port == 22:
        changes["port"] = int(found["port"])
    if "identityfile" in found and not target.key_path:
        changes["key_path"] = os.path.expanduser(found["identityfile"][0])
    if "userknownhostsfile" in found and not target.known_hosts:
        changes["known_hosts"] = os.path.expanduser(found["userknownhostsfile"].split()[0])
    if found.get("controlmaster", "").lower() == "no" or found.get("controlpersist", "").lower() == "no":
        changes["persist"] = False
    if "proxyjump" in found and not target.proxy_jump and found["proxyjump"].lower() != "none":
        jump = found["proxyjump"].split(",")[0]
        user, _, hostport = jump.rpartition("@")
        host, _, port = hostport.partition(":")
        changes["proxy_jump"] = resolve_target(
            SSHTarget(name=host, address=host, port=int(port or 22), user=user or "root",
                      key_path=changes.get("key_path", target.key_path),
                      known_hosts=changes.get("known_hosts", target.known_hosts)), config_path)
    return replace(target, **changes) if changes else target


def _load_host_keys(client: paramiko.SSHClient, target: SSHTarget) -> None:
    """Known hosts are read-only to orch: loaded as "system" keys, never written back."""
    if target.known_hosts:
        path = os.path.expanduser(target.known_hosts)
        if not os.path.exists(path):
            raise HostKeyError(f"known_hosts file {path} does not exist", host=target.name)
        client.load_system_host_keys(path)
        return
    for path in ("/etc/ssh/ssh_known_hosts", os.path.expanduser("~/.ssh/known_hosts")):
        if os.path.exists(path):
            client.load_system_host_keys(path)


class SSHConnection:
    """One authenticated SSH connection to one host; thread-safe for opening channels."""

    def __init__(self, target: SSHTarget):
        self.target = target
        self._client: Optional[paramiko.SSHClient] = None
        self._jump: Optional["SSHConnection"] = None
        self._lock = threading.Lock()
        self._processes: List["RemoteProcess"] = []     # sessions: ended when this closes

    # -- connecting -----------------------------------------------------------------------
    def connect(self) -> "SSHConnection":
        with self._lock:
            if self._client is not None and self.is_active():
                return self
            self._close_locked()
            t = self.target
            client = paramiko.SSHClient()
            _load_host_keys(client, t)
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            sock = None
            if t.proxy_jump is not None:
                self._jump = SSHConnection(t.proxy_jump).connect()
                try:
                    sock = self._jump.transport().open_channel(
                        "direct-tcpip", (t.address, t.port), ("127.0.0.1", 0), timeout=t.connect_timeout)
                except (paramiko.SSHException, OSError) as exc:
                    raise TransportError(f"cannot reach {t.address}:{t.port} through {t.proxy_jump.name}: {exc}",
                                         host=t.name) from exc
            try:
                client.connect(
                    t.address, port=t.port, username=t.user,
                    key_filename=os.path.expanduser(t.key_path) if t.key_path else None,
                    timeout=t.connect_timeout, banner_timeout=t.connect_timeout, auth_timeout=t.connect_timeout,
                    allow_agent=t.key_path is None, look_for_keys=t.key_path is None, sock=sock,
                )
            except paramiko.BadHostKeyException as exc:
                raise HostKeyError(
                    f"host key mismatch for {t.address}: got {exc.key.get_name()} "
                    f"{exc.key.fingerprint}, known_hosts has {exc.expected_key.fingerprint}",
                    host=t.name, hint="the host was replaced, or someone is in the middle; "
                                      "fix known_hosts only if you know why") from exc
            except paramiko.SSHException as exc:
                if "not found in known_hosts" in str(exc):
                    raise HostKeyError(f"host key of {t.address} is not in known_hosts", host=t.name,
                                       hint="add it with ssh-keyscan after checking its fingerprint") from exc
                raise TransportError(f"ssh to {t.user}@{t.address}:{t.port} failed: {exc}", host=t.name) from exc
            except (socket.timeout, OSError) as exc:
                raise TransportError(f"cannot connect to {t.address}:{t.port}: {exc}", host=t.name) from exc
            transport = client.get_transport()
            transport.set_keepalive(15)
            transport.default_window_size = WINDOW
            transport.default_max_packet_size = MAX_PACKET
            self._client = client
            return self

    def is_active(self) -> bool:
        tr = self._client.get_transport() if self._client else None
        return bool(tr and tr.is_active())

    def transport(self) -> paramiko.Transport:
        if self._client is None:
            self.connect()
        return self._client.get_transport()

    def end_input(self) -> None:
        """Tell every session on this host that no request follows (they end on their own)."""
        with self._lock:
            processes = list(self._processes)
        for p in processes:
            p.end_input()

    def close(self, wait: bool = True) -> None:
        """Close its sessions and its connection; ``wait=False``: do not wait for the OpenSSH
        clients of sessions whose input has ended (they end with their agents)."""
        with self._lock:
            processes, self._processes = self._processes, []
        for p in processes:
            p.close() if wait else p.let_go()
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._jump is not None:
            self._jump.close()
            self._jump = None

    # -- commands -------------------------------------------------------------------------
    @staticmethod
    def command_line(argv: Sequence[str]) -> str:
        """The only place a remote shell line is built."""
        return shlex.join([str(a) for a in argv])

    def open_command(self, argv: Sequence[str]) -> paramiko.Channel:
        """Start `argv` on the host; the caller streams stdin/stdout on the channel."""
        self.connect()
        try:
            channel = self.transport().open_session(window_size=WINDOW, max_packet_size=MAX_PACKET)
            channel.exec_command(self.command_line(argv))
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise TransportError(f"cannot start {argv[0]}: {exc}", host=self.target.name) from exc
        return channel

    def run(self, argv: Sequence[str], *, input: Optional[bytes] = None,
            timeout: Optional[float] = None) -> CommandResult:
        channel = self.open_command(argv)
        try:
            channel.settimeout(timeout)
            out = bytearray()
            err = bytearray()
            reader = threading.Thread(target=_drain, args=(channel.makefile_stderr("rb"), err), daemon=True)
            reader.start()
            if input:
                channel.sendall(input)
            channel.shutdown_write()
            while True:
                chunk = channel.recv(65536)
                if not chunk:
                    break
                out += chunk
            code = channel.recv_exit_status()
            reader.join(timeout=5)
            return CommandResult(code, bytes(out), bytes(err))
        except socket.timeout as exc:
            raise TransportError(f"{argv[0]} timed out after {timeout}s", host=self.target.name) from exc
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise TransportError(f"connection lost running {argv[0]}: {exc}", host=self.target.name) from exc
        finally:
            close_quietly(channel)

    # -- bulk streams ---------------------------------------------------------------------
    def openssh_argv(self, argv: Sequence[str]) -> Optional[List[str]]:
        """The OpenSSH client command that runs `argv` on this host with the same strict host-key
        checking, or None where it cannot stand in (no `ssh` binary, or a ProxyJump chain)."""
        ssh = shutil.which("ssh")
        t = self.target
        if not ssh or t.proxy_jump is not None:
            return None
        cmd = [ssh, "-F", "/dev/null", "-T", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
               "-o", f"ConnectTimeout={int(max(1, t.connect_timeout))}", "-o", "ServerAliveInterval=15",
               "-o", "LogLevel=ERROR", "-p", str(t.port), "-l", t.user]
        if t.known_hosts:
            cmd += ["-o", f"UserKnownHostsFile={os.path.expanduser(t.known_hosts)}",
                    "-o", "GlobalKnownHostsFile=/dev/null"]
        if t.key_path:
            cmd += ["-i", os.path.expanduser(t.key_path), "-o", "IdentitiesOnly=yes"]
        kex = os.environ.get(KEX_ENV, DEFAULT_KEX).strip()
        if kex and kex != "default":
            cmd += ["-o", f"KexAlgorithms={kex}"]
        return cmd + control_options(t) + [t.address, "--", self.command_line(argv)]

    def run_shared(self, argv: Sequence[str], *, timeout: float = 30.0) -> CommandResult:
        """A small command through the OpenSSH client, on the connection other commands share
        (no handshake when one persists); through paramiko where OpenSSH cannot stand in."""
        cmd = self.openssh_argv(argv)
        if cmd is None:
            return self.run(argv, timeout=timeout)
        try:
            p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise TransportError(f"{argv[0]} timed out after {timeout}s", host=self.target.name) from exc
        if p.returncode == 255:
            raise TransportError(f"ssh to {self.target.address} failed: "
                                 f"{p.stderr.decode(errors='replace').strip()[-300:] or 'exit 255'}",
                                 host=self.target.name)
        return CommandResult(p.returncode, p.stdout, p.stderr)

    def open_process(self, argv: Sequence[str]) -> "RemoteProcess":
        """Start `argv` on the host with its stdin/stdout as pipes here (an agent session).

        Through the OpenSSH client where it can stand in, so the connection is shared with
        (and outlives, see PERSIST_ENV) other commands; else on a paramiko channel."""
        cmd = self.openssh_argv(argv)
        if cmd is None:
            process = RemoteProcess(self.target.name, channel=self.open_command(argv))
        else:
            process = RemoteProcess(self.target.name, proc=subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        with self._lock:
            self._processes.append(process)
        return process

    def knock(self, line: bytes, *, timeout: float = DOOR_TIMEOUT) -> Optional[socket.socket]:
        """A connection to the host's door with ``line`` sent, or None where there is none
        here (no persisting OpenSSH master yet, connections not shared, paramiko only)."""
        if self.target.proxy_jump is not None or not shutil.which("ssh"):
            return None
        p = door_path(self.target)
        if p is None:
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(p)
            sock.sendall(line)
        except OSError:          # no master (first command), or one that went away
            sock.close()
            return None
        return sock

    def read_door(self, line: bytes, *, timeout: float = DOOR_TIMEOUT) -> Optional[bytes]:
        """Everything the door answers to ``line`` (None: no door, or nobody behind it)."""
        sock = self.knock(line, timeout=timeout)
        if sock is None:
            return None
        out = bytearray()
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                out += chunk
        except OSError:
            return None
        finally:
            sock.close()
        return bytes(out) or None        # nothing at all: the master could not reach the socket

    def open_door_session(self, line: bytes, *, timeout: float = DOOR_TIMEOUT) -> Optional["RemoteProcess"]:
        """An agent session forked by the host's `serve` (runtime/door.py), or None where the
        door is missing or refuses (another agent serves there): then open one the old way."""
        sock = self.knock(line, timeout=timeout)
        if sock is None:
            return None
        try:
            answer = json.loads(sock.makefile("rb").readline(4096) or b"{}")
            ok = answer.get("ok") is True
        except (OSError, ValueError, AttributeError):
            ok = False
        if not ok:
            sock.close()
            return None
        sock.settimeout(None)            # each call has its own deadline (AgentSession)
        process = RemoteProcess(self.target.name, sock=sock)
        process.pid = answer.get("pid")  # the session's process on the host
        with self._lock:
            self._processes.append(process)
        return process

    def stream_to(self, argv: Sequence[str], chunks: Iterable[bytes],
                  on_bytes: Optional[Callable[[int], None]] = None) -> CommandResult:
        """Run `argv` with `chunks` as its stdin: bulk data such as image layers.

        Uses the OpenSSH client where it can (its C transport moves bulk data at the speed of
        `scp`; paramiko's pure-Python packet loop is slower), else a paramiko channel.
        """
        cmd = self.openssh_argv(argv)
        if cmd is None:
            return self._stream_paramiko(argv, chunks, on_bytes)
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:   # a 1 MiB pipe: ssh keeps sending while we read the next chunk from disk
            fcntl.fcntl(proc.stdin.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
        except OSError:
            pass
        out, err = bytearray(), bytearray()
        readers = [threading.Thread(target=_drain, args=(proc.stdout, out), daemon=True),
                   threading.Thread(target=_drain, args=(proc.stderr, err), daemon=True)]
        for r in readers:
            r.start()
        try:
            for chunk in chunks:
                proc.stdin.write(chunk)
                if on_bytes:
                    on_bytes(len(chunk))
            proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass                                  # the exit status below says what happened
        finally:
            code = proc.wait()
            for r in readers:
                r.join(timeout=5)
        if code == 255:
            raise TransportError(f"ssh stream to {self.target.address} broke: "
                                 f"{bytes(err).decode(errors='replace').strip()[-300:] or 'exit 255'}",
                                 host=self.target.name)
        return CommandResult(code, bytes(out), bytes(err))

    def _stream_paramiko(self, argv, chunks, on_bytes) -> CommandResult:
        channel = self.open_command(argv)
        try:
            for chunk in chunks:
                channel.sendall(chunk)
                if on_bytes:
                    on_bytes(len(chunk))
            channel.shutdown_write()
            out = bytearray()
            while True:
                chunk = channel.recv(65536)
                if not chunk:
                    break
                out += chunk
            return CommandResult(channel.recv_exit_status(), bytes(out), b"")
        except (socket.timeout, paramiko.SSHException, OSError, EOFError) as exc:
            raise TransportError(f"stream interrupted: {exc}", host=self.target.name) from exc
        finally:
            close_quietly(channel)

    def put_file(self, local_path: str, remote_path: str, mode: int = 0o644) -> None:
        """Copy a small file (e.g. the agent) with SFTP; written to a temp name, then renamed."""
        self.connect()
        tmp = f"{remote_path}.tmp-{os.getpid()}"
        try:
            sftp = self.transport().open_sftp_client()
            try:
                sftp.put(local_path, tmp)
                sftp.chmod(tmp, mode)
                sftp.posix_rename(tmp, remote_path)
            finally:
                sftp.close()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise TransportError(f"cannot copy {local_path} to {remote_path}: {exc}", host=self.target.name) from exc


def control_dir() -> Optional[str]:
    """The directory of the ControlMaster sockets (short: a socket path is at most 107 bytes),
    private to this user; None where it cannot be made safely."""
    path = os.path.join(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir(), f"orch-ssh-{os.getuid()}")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None                        # someone else's, or readable by others: no sharing
    return path


def _control_path(target: SSHTarget) -> Optional[str]:
    """The ControlMaster socket of this host, where connections persist (else None)."""
    persist = os.environ.get(PERSIST_ENV, DEFAULT_PERSIST).strip().lower()
    if not target.persist or persist in ("0", "no", "off", "false", ""):
        return None
    d = control_dir()
    if d is None:
        return None
    # one master per host *and* per trust settings: a command that checks against another
    # known_hosts file or logs in with another key never rides on this one's connection
    key = "\0".join(str(x) for x in (target.address, target.port, target.user, target.key_path,
                                      target.known_hosts))
    return f"{d}/{hashlib.sha256(key.encode()).hexdigest()[:32]}"


def control_options(target: SSHTarget) -> List[str]:
    """OpenSSH options that share one connection per host between commands and keep it open
    for a while after the last one (empty when turned off)."""
    path = _control_path(target)
    if path is None:
        return []
    persist = os.environ.get(PERSIST_ENV, DEFAULT_PERSIST).strip().lower()
    # the agent's door (runtime/door.py), forwarded by the master for as long as it lives: a
    # later command reads the host or opens a session through it without starting a process
    return ["-o", "ControlMaster=auto", "-o", f"ControlPath={path}", "-o", f"ControlPersist={persist}",
            "-o", "StreamLocalBindUnlink=yes", "-L", f"{path}{DOOR_SUFFIX}:{REMOTE_DOOR}"]


def door_path(target: SSHTarget) -> Optional[str]:
    """The local end of the host's door forward, where connections persist (else None)."""
    path = _control_path(target)
    return path + DOOR_SUFFIX if path is not None else None


class RemoteProcess:
    """A remote command with pipes: an OpenSSH client process, or a paramiko channel."""

    def __init__(self, host: str, *, proc: Optional[subprocess.Popen] = None,
                 channel: Optional[paramiko.Channel] = None, sock: Optional[socket.socket] = None):
        self.host = host
        self._proc, self._channel, self._sock = proc, channel, sock
        self._err = bytearray()
        self._reader: Optional[threading.Thread] = None
        self.pid: Optional[int] = None   # on the host, where known (a door session)
        if sock is not None:         # a door session: its log lines go to the host's agent.log
            self.stdin, self.stdout = sock.makefile("wb"), sock.makefile("rb")
            return
        if proc is not None:
            self.stdin, self.stdout = proc.stdin, proc.stdout
            err = proc.stderr
        else:
            self.stdin, self.stdout = channel.makefile_stdin("wb"), channel.makefile("rb")
            err = channel.makefile_stderr("rb")
        self._reader = threading.Thread(target=_drain, args=(err, self._err), daemon=True)
        self._reader.start()

    def _close_sock(self) -> None:
        for f in (self.stdin, self.stdout):
            try:
                f.close()
            except (OSError, ValueError):
                pass
        self._sock.close()

    def stderr_tail(self, n: int = 500) -> str:
        return bytes(self._err[-n:]).decode(errors="replace").strip()

    def kill(self) -> None:
        """Stop it now (a deadline passed): a blocked read then sees EOF."""
        if self._sock is not None:
            _shutdown(self._sock, socket.SHUT_RDWR)
        elif self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
        else:
            close_quietly(self._channel)

    def end_input(self) -> None:
        try:
            self.stdin.close()
        except (OSError, ValueError, EOFError, paramiko.SSHException):
            pass
        if self._sock is not None:
            _shutdown(self._sock, socket.SHUT_WR)

    def let_go(self) -> None:
        """End its input and leave it: an OpenSSH client ends once the agent has (a command's
        last moments need not wait for that); a paramiko channel is closed."""
        self.end_input()
        if self._sock is not None:
            self._close_sock()
        elif self._proc is None:
            close_quietly(self._channel)

    def close(self, timeout: float = 10.0) -> Optional[int]:
        """End its input, wait for it, and return its exit code (None if unknown)."""
        self.end_input()
        if self._sock is not None:       # the agent's child ends at EOF: wait for its own
            if self._sock.fileno() < 0:  # closed before (a deadline, a lost link)
                return None
            try:
                self._sock.settimeout(timeout)
                while self.stdout.read(65536):
                    pass
                code: Optional[int] = 0
            except (OSError, ValueError):
                code = None
            self._close_sock()
            return code
        if self._proc is not None:
            try:
                code = self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                code = self._proc.wait()
            for f in (self._proc.stdout,):
                f.close()
        else:
            code = self._channel.recv_exit_status() if self._channel.exit_status_ready() or \
                self._channel.status_event.wait(timeout) else None
            close_quietly(self._channel)
        if self._reader is not None:
            self._reader.join(timeout=2)
        return code


def _shutdown(sock: socket.socket, how: int) -> None:
    try:
        sock.shutdown(how)
    except OSError:
        pass


def close_quietly(channel: paramiko.Channel) -> None:
    """Close a channel whose link may already be gone (closing must not mask the real error)."""
    try:
        channel.close()
    except (paramiko.SSHException, OSError, EOFError):
        pass


def _drain(stream, sink: bytearray) -> None:
    try:
        while True:
            chunk = stream.read(65536)
            if not chunk:
                return
            sink += chunk
    except (OSError, EOFError, paramiko.SSHException):
        return


class ConnectionPool:
    """One live connection per host, made on first use and reused; reconnects when dropped."""

    def __init__(self, targets: Iterable[SSHTarget] = ()):
        self._targets: Dict[str, SSHTarget] = {t.name: t for t in targets}
        self._conns: Dict[str, SSHConnection] = {}
        self._lock = threading.Lock()

    def add(self, target: SSHTarget) -> None:
        with self._lock:
            self._targets[target.name] = target

    def get(self, name: str) -> SSHConnection:
        """The host's connection; paramiko connects on first use (an agent session goes
        through the OpenSSH client and may never need it)."""
        with self._lock:
            conn = self._conns.get(name)
            if conn is None:
                conn = self._conns[name] = SSHConnection(self._targets[name])
        return conn

    def close(self, wait: bool = True) -> None:
        """``wait=False`` (the end of a command): sessions are told to end and not waited for."""
        with self._lock:
            conns, self._conns = list(self._conns.values()), {}
        for c in conns:              # every host's sessions wind down at once, then we wait
            c.end_input()
        for c in conns:
            c.close(wait)

    def __enter__(self) -> "ConnectionPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
