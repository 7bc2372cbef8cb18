"""The agent protocol: the one module both the orchestrator and the agent import.

Stdlib only, Python 3.9+. It fixes verb names, exit and error codes, the framing of
``receive`` and how a release is named, so both sides agree byte for byte.

Invocation: ``python3 AGENT.pyz [--root /var/lib/orch] [--run /run/orch] VERB [ARGS]``; a
request is one JSON object on stdin (verb arguments are another spelling of it); the answer is
one JSON object on stdout. Exit 0 means ok; otherwise ``{"error": {"code", "message", ...}}``
and EXIT_* below (``apply``/``rollback``/``remove`` exit EXIT_PARTIAL with the per-service body
when a service failed). The verbs table is ``runtime/cli.py`` ``VERBS``; an unknown verb
answers E_UNKNOWN_VERB.

Versions: ``info`` reports ``protocol`` (this module's PROTOCOL_VERSION: the verbs and their
shapes) and ``state_schema`` (the layout of the agent's state files, ``runtime/state.py``).
The orchestrator checks both on every session and refuses an agent newer than itself unless a
deliberate downgrade is asked for; an older one is upgraded by ``apply``.

  info                  -> {platform, agent_digest, runtime, runtime_version, python, free_disk,
                            free_memory, nft, protocol, state_schema, host_id, serve_pid}
  have {digests, layers?} -> {present: [...], partial: {digest: bytes}, layers?: [{diff_id, blob}]}
  observe {digests}     -> {info, have, status} in one round trip (what plan/apply ask first)
  receive (frames)      -> {stored: [...], partial: {digest: bytes}}   (see frame_header)
  apply {services: {NAME: {release?, index, manifest?, deploy, secrets: {name: b64}}},
         who, wait=true} -> {services: {NAME: {ok, release, slot, wanted, error?}}}
                           returns once the new release serves (or failed, old one kept);
                           with wait=false: persists the target, `serve` converges.
  prepare {services (as apply), lock} -> {services: {NAME: {prepared: SLOT|null, instance?, why?}}}
                           a later wave's container, made while an earlier wave runs: unpacked,
                           bundled, wired, `runc create`d, not started; target and what serves
                           unchanged. Held while the lock is: apply starts it, else serve
                           stops it once the lock is gone. Best effort (why: what apply will do)
  status                -> {services: {NAME: {release, slot, state, health, since, previous,
                            wanted, slots: {a|b: {release, state, ip}}, error?}}, serve_pid}
                           state: running|stopped|created|gone|missing;
                           health: healthy|unhealthy|unknown (serve probes once per interval)
  logs NAME [--tail N] [--follow]   raw text of the serving slot's stdout+stderr (not JSON)
  rollback NAME [--to RELEASE] [--who W]  {lock}  -> like apply
  remove NAME [--who W] {lock} -> {services: {NAME: {ok, removed}}}
  gc {lock}             -> {removed_images, removed_blobs, removed_layers, freed}
  lock {holder, ttl, token?, force?, observe?} -> {ok, lock: {holder, since, expires}, observe?}
                           | error "locked" (+holder, since, expires); observe {digests}: also
                           what `observe` answers, read once the lock is held (one round trip)
  unlock {token|holder, force, status?} -> {ok, released, status?} (status: what `status` answers)
The MUTATING verbs run only for the session holding the deploy lock: their request carries
``lock`` (the token given to ``lock``), else they fail with "locked" naming the holder.
  audit                 -> {lines: [{when, who, action, service, release}]}
  volumes               -> {volumes: [{name, service (None: shared), path, bytes}]}
  exec SERVICE [--tty] CMD...  runs CMD in the serving container with the session's stdio;
                        the exit code is CMD's (not_found when nothing serves)
  serve [--daemon]      the supervisor loop; pidfile <run>/serve.pid (/run/orch/serve.pid);
                        --daemon starts it detached and answers {pid, pidfile, started}
  finish NAME...        the old slots' drain and stop that apply left (apply answers once the
                        new release serves and starts this detached; like serve, it only
                        converges towards the target set under the lock)
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

PROTOCOL_VERSION = 3      # 2: verbs table (unknown_verb), state_schema in info; 3: prepare
STATE_SCHEMA = 2          # 2: state/schema.json; v1 deploy specs get v1's defaults filled in
DEFAULT_ROOT = "/var/lib/orch"
DEFAULT_RUN = "/run/orch"
PIDFILE = "serve.pid"  # under the run dir: /run/orch/serve.pid

MUTATING = frozenset({"apply", "prepare", "rollback", "remove", "gc"})   # need the deploy-lock token

# exit codes (stable)
EXIT_OK = 0
EXIT_ERROR = 1        # the verb ran and failed (see error.code)
EXIT_USAGE = 2        # bad arguments or request
EXIT_LOCKED = 3       # another holder has the deploy lock
EXIT_PARTIAL = 4      # apply: at least one service failed (body still lists every service)
EXIT_NO_AGENT = 5     # the launcher found no agent file at the path it was given

# error codes
E_USAGE = "usage"
E_UNKNOWN_VERB = "unknown_verb"
E_NO_AGENT = "no_agent"
E_STATE_SCHEMA = "state_schema"
E_BAD_REQUEST = "bad_request"
E_DIGEST = "digest_mismatch"
E_MISSING_BLOB = "missing_blob"
E_UNSAFE_IMAGE = "unsafe_image"
E_RUNTIME = "runtime"
E_NO_ROOM = "no_room"
E_HEALTH = "health"
E_LOCKED = "locked"
E_BUSY = "busy"               # another agent process kept the host busy past the wait
E_NOT_FOUND = "not_found"
E_INTERNAL = "internal"


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8: the bytes that get hashed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def release_id(index_digest: str, deploy_spec: Mapping[str, Any],
               secrets_mac: Optional[str] = None) -> str:
    """Name of a release: sha256 over the image index digest, the normalised deploy spec and,
    for a service with secrets, ``secrets_mac``: an HMAC of their values keyed by a key that
    never leaves the control machine, so a new value is a new release while nobody who reads a
    plan, an audit line or a host's state can test a guess of the value against it."""
    body: Dict[str, Any] = {"index": index_digest, "deploy": deploy_spec}
    if secrets_mac:
        body["secrets"] = secrets_mac
    h = hashlib.sha256(canonical_json(body)).hexdigest()
    return "r-" + h[:16]


def split_digest(digest: str) -> str:
    """``sha256:<64 hex>`` -> hex; ValueError otherwise (digests name files, so check strictly)."""
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64 or hexpart.strip("0123456789abcdef"):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return hexpart


# --- receive framing ------------------------------------------------------------------
# A stream of frames: one JSON header line {"digest","size","offset"} + "\n", then exactly
# size - offset raw bytes. Repeated until EOF.

def frame_header(digest: str, size: int, offset: int = 0) -> bytes:
    return json.dumps({"digest": digest, "size": size, "offset": offset},
                      sort_keys=True).encode() + b"\n"


def parse_frame_header(line: bytes) -> Tuple[str, int, int]:
    try:
        head = json.loads(line)
        digest, size, offset = head["digest"], int(head["size"]), int(head.get("offset", 0))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"bad frame header: {line[:200]!r}") from exc
    split_digest(digest)
    if size < 0 or offset < 0 or offset > size:
        raise ValueError(f"bad frame sizes: size={size} offset={offset}")
    return digest, size, offset


def iter_frames(digests_sizes: Mapping[str, int], partial: Mapping[str, int],
                open_blob) -> Iterator[bytes]:
    """Sender side helper: yield the bytes of a receive stream for these blobs.

    ``partial`` is what ``have`` answered; ``open_blob(digest)`` returns a binary file.
    """
    for digest in sorted(digests_sizes):
        size = digests_sizes[digest]
        offset = int(partial.get(digest, 0))
        if offset > size:
            offset = 0
        yield frame_header(digest, size, offset)
        with open_blob(digest) as f:
            f.seek(offset)
            left = size - offset
            while left:
                chunk = f.read(min(left, 1 << 20))
                if not chunk:
                    raise ValueError(f"{digest}: source shorter than {size} bytes")
                left -= len(chunk)
                yield chunk


# --- answers --------------------------------------------------------------------------

def error_body(code: str, message: str, **extra: Any) -> Dict[str, Any]:
    err: Dict[str, Any] = {"code": code, "message": message}
    err.update(extra)
    return {"error": err}


def parse_answer(rc: int, stdout: bytes) -> Tuple[bool, Dict[str, Any]]:
    """Orchestrator side: (ok, body). A non-JSON answer becomes an internal error body."""
    try:
        body = json.loads(stdout.decode() or "{}")
        if not isinstance(body, dict):
            raise ValueError("not an object")
    except ValueError:
        return False, error_body(E_INTERNAL, f"agent answered non-JSON (exit {rc}): "
                                 f"{stdout[:300]!r}")
    return rc in (EXIT_OK,), body


def apply_request(services: Mapping[str, Mapping[str, Any]], who: str,
                  wait: Optional[bool] = True, lock: Optional[str] = None) -> Dict[str, Any]:
    """Shape of the ``apply`` request (each service: release, index, manifest, deploy, secrets;
    ``lock``: the deploy-lock token of the session)."""
    return {"services": dict(services), "who": who, "wait": bool(wait), "lock": lock}
