"""Persisted agent state under <root>/state, every write atomic (tmp, fsync, rename).

- target.json   what should run: {service: {release, index, manifest, deploy}}
  Secret values live on the secrets tmpfs under the run dir (<run>/secrets/by-service/
  NAME.json, 0600) and, unless a secret is marked ``tmpfs`` in the manifest, at rest in
  secrets/NAME.json here (0600 in a 0700 dir, root only), so that after a power cut a service
  starts again with no control machine in reach.
- status.json   what the agent did: current slot per service, health/settle marks, failures,
                restart counts, release history, IP allocation cursor
- journal.log   one JSON line per executed step (begin / done / error)
- audit.log     append-only: who applied or rolled back what, when (never secrets)
- lock.json     the deploy lock {holder, token, since, expires} (0600: the token is the
                session's proof that it holds the lock; answers never show it)
- releases.json every release the host was given: {service: {release: target}} (rollback, gc)
- schema.json   {"schema": N}: the layout of the files above (protocol.STATE_SCHEMA). No such
                file beside existing state means version 1. Files keep a shape an older agent
                reads; what changed is a migration below, applied in memory on every read and
                written back by ``upgrade`` (verbs that change the host, and ``serve``), so a
                read never writes. A directory written by a newer agent is refused (NewerState).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from typing import Any, Dict, Iterable, Iterator, List, Optional

from runtime import protocol
from runtime.errors import Busy, Locked, NewerState
from runtime.layout import Layout, read_json, write_json


SCHEMA_FILE = "schema.json"
# What a version 1 agent assumed where a deploy spec left a key out (its defaults differed from
# today's: drain was 0.0), so a migrated spec keeps its meaning.
V1_DEPLOY_DEFAULTS = {"drain": 0.0, "monitor": 0.0, "stop_timeout": 10.0, "stop_first": False,
                      "keep_releases": 3}


def _v1_target(target: Dict[str, Any]) -> Dict[str, Any]:
    for t in target.values():
        if isinstance(t, dict) and isinstance(t.get("deploy"), dict):
            for k, v in V1_DEPLOY_DEFAULTS.items():
                t["deploy"].setdefault(k, v)
    return target


def _v1_releases(records: Dict[str, Any]) -> Dict[str, Any]:
    for by_release in records.values():
        if isinstance(by_release, dict):
            _v1_target(by_release)
    return records


# (from version, file) -> function(data) -> data of the next version
MIGRATIONS = {(1, "target.json"): _v1_target, (1, "releases.json"): _v1_releases}


def disk_schema(state_dir: str) -> int:
    """The schema version of a state directory (1 when it predates schema.json; the current
    one when there is no state yet)."""
    rec = read_json(os.path.join(state_dir, SCHEMA_FILE))
    if isinstance(rec, dict) and isinstance(rec.get("schema"), int):
        return rec["schema"]
    if any(os.path.exists(os.path.join(state_dir, n)) for n in ("target.json", "status.json")):
        return 1
    return protocol.STATE_SCHEMA


class State:
    def __init__(self, layout: Layout, clock=time.time):
        self.layout = layout
        self.clock = clock
        self.dir = layout.state

    def _p(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def _load(self, name: str) -> Dict[str, Any]:
        """A state file as this agent's schema sees it (migrated in memory)."""
        version = disk_schema(self.dir)
        if version > protocol.STATE_SCHEMA:
            raise NewerState(f"{self.dir} was written by a newer agent (state schema {version}; "
                             f"this agent reads up to {protocol.STATE_SCHEMA})",
                             state_schema=version)
        data = read_json(self._p(name), {}) or {}
        for v in range(version, protocol.STATE_SCHEMA):
            step = MIGRATIONS.get((v, name))
            if step is not None:
                data = step(data)
        return data

    def upgrade(self) -> int:
        """Write every state file in this agent's schema (once; a no-op when current).
        Returns the version found."""
        version = disk_schema(self.dir)
        if version < protocol.STATE_SCHEMA:
            for name in sorted({n for (_, n) in MIGRATIONS}):
                if os.path.exists(self._p(name)):
                    write_json(self._p(name), self._load(name), 0o600, durable=True)
        if version <= protocol.STATE_SCHEMA and not os.path.exists(self._p(SCHEMA_FILE)):
            write_json(self._p(SCHEMA_FILE), {"schema": protocol.STATE_SCHEMA}, durable=True)
        elif version > protocol.STATE_SCHEMA:
            self._load("target.json")       # raises NewerState
        return version

    # --- target ------------------------------------------------------------------------
    def target(self) -> Dict[str, Any]:
        return self._load("target.json")

    def records(self) -> Dict[str, Any]:
        """releases.json: {service: {release: target}}."""
        return self._load("releases.json")

    def save_records(self, records: Dict[str, Any]) -> None:
        write_json(self._p("releases.json"), records, 0o600, durable=True)

    def save_target(self, target: Dict[str, Any]) -> None:
        write_json(self._p("target.json"), target, 0o600, durable=True)

    def _secrets_dir(self) -> str:
        return os.path.join(self.layout.secrets, "by-service")

    def _at_rest(self, service: str) -> str:
        return os.path.join(self.layout.state, "secrets", service + ".json")

    def secrets(self, service: str) -> Dict[str, str]:
        """The service's secret values: from the tmpfs, else (a reboot emptied it) from their
        copy at rest, which goes back onto the tmpfs."""
        values = read_json(os.path.join(self._secrets_dir(), service + ".json"), None)
        if values is None:
            values = read_json(self._at_rest(service), None) or {}
            if values:
                self._write_tmpfs(service, values)
        return values

    def save_secrets(self, service: str, values: Dict[str, str],
                     keep: Optional[Iterable[str]] = None) -> None:
        """On the tmpfs; and at rest (root-only: 0600 in a 0700 directory of the host's disk)
        the ones named in ``keep`` (None: all), so that after a power cut the service starts
        with no control machine in reach. A secret left out of ``keep`` (``tmpfs: true`` in the
        manifest) never touches the disk."""
        rest_path = self._at_rest(service)
        if not values:
            for p in (os.path.join(self._secrets_dir(), service + ".json"), rest_path):
                if os.path.exists(p):
                    os.unlink(p)
            return
        self._write_tmpfs(service, values)
        names = None if keep is None else set(keep)
        rest = {k: v for k, v in values.items() if names is None or k in names}
        if rest:
            os.makedirs(os.path.dirname(rest_path), mode=0o700, exist_ok=True)
            write_json(rest_path, rest, 0o600, durable=True)
        elif os.path.exists(rest_path):
            os.unlink(rest_path)

    def _write_tmpfs(self, service: str, values: Dict[str, str]) -> None:
        from runtime.container import ensure_secrets_tmpfs
        ensure_secrets_tmpfs(self.layout)
        os.makedirs(self._secrets_dir(), mode=0o700, exist_ok=True)
        write_json(os.path.join(self._secrets_dir(), service + ".json"), values, 0o600)

    # --- status ------------------------------------------------------------------------
    def status(self) -> Dict[str, Any]:
        st = self._load("status.json")
        for k, default in (("current", {}), ("healthy", []), ("settled", []), ("failed", {}),
                           ("restarts", {}), ("history", {}), ("ipam", 1)):
            st.setdefault(k, default)
        return st

    def save_status(self, st: Dict[str, Any]) -> None:
        st["healthy"] = st["healthy"][-64:]
        st["settled"] = st["settled"][-64:]
        write_json(self._p("status.json"), st)

    # --- journal and audit ---------------------------------------------------------------
    def _append(self, name: str, record: Dict[str, Any], sync: bool = True) -> None:
        line = json.dumps(record, sort_keys=True) + "\n"
        fd = os.open(self._p(name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line.encode())
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def journal(self, step: str, phase: str, **extra: Any) -> None:
        rec = {"t": round(self.clock(), 3), "step": step, "phase": phase}
        rec.update(extra)
        self._append("journal.log", rec, sync=False)
        self._trim("journal.log", 1 << 20)

    def _trim(self, name: str, limit: int) -> None:
        p = self._p(name)
        try:
            if os.path.getsize(p) > limit:
                os.replace(p, p + ".1")
        except OSError:
            pass

    def audit(self, who: str, action: str, service: str, release: str, **extra: Any) -> None:
        rec = {"when": round(self.clock(), 3), "who": who, "action": action,
               "service": service, "release": release}
        rec.update(extra)
        self._append("audit.log", rec)

    def audit_lines(self) -> List[Dict[str, Any]]:
        try:
            with open(self._p("audit.log")) as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    # --- locks ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def flock(self, name: str, blocking: bool = True, timeout: float = 600.0
              ) -> Iterator[bool]:
        """A kernel lock (released when the process dies, even by kill -9). Blocking: waits
        up to ``timeout`` then raises Busy; non-blocking: yields whether it was taken."""
        fd = os.open(self._p(name), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            got = False
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    got = True
                    break
                except BlockingIOError:
                    if not blocking:
                        break
                    if time.monotonic() > deadline:
                        raise Busy(f"{name} is held by another agent process for over "
                                   f"{timeout:.0f} s")
                    time.sleep(0.01)
            yield got
        finally:
            os.close(fd)

    def lock(self, holder: str, ttl: float, token: Optional[str] = None,
             force: bool = False) -> Dict[str, Any]:
        """Take (or extend) the deploy lock for the session ``token`` (default: ``holder``).
        Held by another live session: Locked, naming it, unless ``force`` (the orchestrator
        forces only a host whose holder lost the fleet's first host, see fleet/lock.py)."""
        token = token or holder
        with self.flock("lock.flock"):
            now = self.clock()
            cur = read_json(self._p("lock.json"))
            mine = bool(cur) and _token_of(cur) == token
            if cur and not mine and cur.get("expires", 0) > now and not force:
                raise Locked(f"locked by {cur['holder']}", holder=cur["holder"],
                             since=cur["since"], expires=cur["expires"])
            since = cur["since"] if mine else now
            rec = {"holder": holder, "token": token, "since": since, "expires": now + float(ttl)}
            write_json(self._p("lock.json"), rec, 0o600, durable=True)
            return {k: v for k, v in rec.items() if k != "token"}

    def unlock(self, token: str, force: bool = False) -> Optional[Dict[str, Any]]:
        with self.flock("lock.flock"):
            cur = read_json(self._p("lock.json"))
            if not cur:
                return None
            if _token_of(cur) != token and not force and cur.get("expires", 0) > self.clock():
                raise Locked(f"locked by {cur['holder']}", holder=cur["holder"],
                             since=cur["since"], expires=cur["expires"])
            os.unlink(self._p("lock.json"))
            return {k: v for k, v in cur.items() if k != "token"}

    def lock_token(self) -> Optional[str]:
        """The token of the session that holds the deploy lock now, or None."""
        cur = read_json(self._p("lock.json"))
        if not cur or cur.get("expires", 0) <= self.clock():
            return None
        return _token_of(cur)

    def lock_mark(self) -> Optional[str]:
        """``lock_mark`` of the token that holds the deploy lock now, or None."""
        token = self.lock_token()
        return lock_mark(token) if token is not None else None

    def check_lock(self, token: Optional[str], verb: str) -> None:
        """A mutating verb runs only for the session that holds the deploy lock."""
        cur = read_json(self._p("lock.json"))
        if not cur or cur.get("expires", 0) <= self.clock():
            raise Locked(f"{verb}: refused, the deploy lock is not held (take it first: "
                         f"orch takes it for every change)", holder=None)
        if not token or _token_of(cur) != token:
            raise Locked(f"{verb}: refused, the deploy lock is held by {cur['holder']}",
                         holder=cur["holder"], since=cur["since"], expires=cur["expires"])


def lock_mark(token: str) -> str:
    """What stands for a lock token outside lock.json (a prepared container's meta.json,
    which a userns container's mapped root owns): its hash, never the token itself."""
    return hashlib.sha256(("orch-lock:" + token).encode()).hexdigest()[:32]


def _token_of(rec: Dict[str, Any]) -> str:
    return str(rec.get("token") or rec.get("holder") or "")
