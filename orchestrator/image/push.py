"""Pushing an image index to any OCI distribution registry (urllib, no Docker).

Blobs first (each asked for with HEAD; only what the registry lacks is uploaded, in one PUT
or in PATCH chunks for big blobs), then every platform manifest by digest, then the index
under the tag. Authentication answers the registry's challenge: Basic, or a Bearer token
from the realm it names, with credentials from ``ORCH_REGISTRY_USERNAME`` /
``ORCH_REGISTRY_PASSWORD`` or the Docker config file (``$DOCKER_CONFIG/config.json``, else
``~/.docker/config.json``). Credentials never appear in messages.
"""
from __future__ import annotations

import base64
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Tuple

from orchestrator.errors import OrchError
from orchestrator.image.registry import _is_loopback
from orchestrator.image.store import MT_INDEX, MT_MANIFEST, Store

CHUNK = 16 << 20              # blobs bigger than this go up in PATCH chunks of this size
_REF = re.compile(r"^(?P<host>\[[0-9a-fA-F:]+\](?::\d+)?|[^/@]+)/(?P<repo>[a-z0-9]+(?:[._/-][a-z0-9]+)*)"
                  r"(?::(?P<tag>[\w][\w.-]{0,127}))?$")


class PushError(OrchError):
    exit_code = 12


@dataclass(frozen=True)
class Target:
    host: str
    repo: str
    tag: str

    @classmethod
    def parse(cls, ref: str) -> "Target":
        m = _REF.match(ref)
        if not m or not ("." in m.group("host") or ":" in m.group("host") or m.group("host") == "localhost"):
            raise PushError(f"expected REGISTRY/REPO[:TAG] like registry.example:5000/team/web:1, got {ref!r}")
        return cls(m.group("host"), m.group("repo"), m.group("tag") or "latest")

    def __str__(self) -> str:
        return f"{self.host}/{self.repo}:{self.tag}"


@dataclass
class PushReport:
    target: str
    index: str
    blobs: int = 0                  # configs and layers of every platform
    sent: int = 0                   # of those, uploaded now (the rest were there)
    bytes_sent: int = 0
    manifests: int = 0
    chunked: int = 0                # blobs sent in PATCH chunks
    sent_digests: List[str] = field(default_factory=list)

    def to_json(self) -> Dict:
        return {"target": self.target, "index": self.index, "blobs": self.blobs, "sent": self.sent,
                "present": self.blobs - self.sent, "bytes_sent": self.bytes_sent, "manifests": self.manifests,
                "chunked": self.chunked}


# ---------------------------------------------------------------- credentials

def credentials(host: str, environ: Optional[Mapping[str, str]] = None) -> Optional[Tuple[str, str]]:
    """(username, password) for ``host``: the environment first, then the Docker config file."""
    env = os.environ if environ is None else environ
    if env.get("ORCH_REGISTRY_USERNAME") is not None or env.get("ORCH_REGISTRY_PASSWORD") is not None:
        return env.get("ORCH_REGISTRY_USERNAME", ""), env.get("ORCH_REGISTRY_PASSWORD", "")
    directory = env.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    path = os.path.join(directory, "config.json")
    try:
        with open(path, "rb") as fh:
            config = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise PushError(f"cannot read {path}: {exc}") from None
    return docker_config_auth(config, host, path)


def docker_config_auth(config: Mapping, host: str, path: str = "config.json") -> Optional[Tuple[str, str]]:
    """The ``auths`` entry for ``host`` in a Docker config (pure)."""
    auths = config.get("auths") or {}
    entry = None
    for key, value in auths.items():
        name = re.sub(r"^https?://", "", key).split("/", 1)[0]
        if name == host or (host in ("registry-1.docker.io", "docker.io") and name == "index.docker.io"):
            entry = value or {}
            break
    helper = (config.get("credHelpers") or {}).get(host) or (config.get("credsStore") if entry == {} else None)
    if entry is None and helper is None:
        return None
    if helper and not (entry or {}).get("auth"):
        raise PushError(f"{path}: {host} uses the credential helper {helper!r}, which orch does not run",
                        hint="set ORCH_REGISTRY_USERNAME and ORCH_REGISTRY_PASSWORD instead")
    if entry.get("identitytoken"):
        raise PushError(f"{path}: {host} has an identity token; orch needs a username and password",
                        hint="set ORCH_REGISTRY_USERNAME and ORCH_REGISTRY_PASSWORD instead")
    if entry.get("auth"):
        try:
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise PushError(f"{path}: the auth entry for {host} is not base64 of user:password") from None
        return user, password
    if "username" in entry:
        return entry.get("username", ""), entry.get("password", "")
    return None


# ---------------------------------------------------------------- the protocol

class Registry:
    """One repository on one registry, with the challenge-driven authentication it asks for."""

    def __init__(self, target: Target, creds: Optional[Tuple[str, str]], insecure: bool = False,
                 timeout: float = 60.0, opener: Callable = urllib.request.urlopen):
        self.target = target
        self.creds = creds
        self.scheme = "http" if insecure or _is_loopback(target.host) else "https"
        self.base = f"{self.scheme}://{target.host}"
        self.timeout = timeout
        self.opener = opener
        self.auth: Optional[str] = None        # the Authorization header value that worked

    def url(self, path: str) -> str:
        return f"{self.base}/v2/{self.target.repo}/{path}"

    def request(self, method: str, url: str, data=None, headers: Optional[Dict[str, str]] = None,
                ok=(200, 201, 202, 204)) -> Tuple[int, Dict[str, str], bytes]:
        """One call; on a 401 it authenticates as challenged and tries once more."""
        for attempt in range(2):
            req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
            if self.auth:
                req.add_header("Authorization", self.auth)
            try:
                with self.opener(req, timeout=self.timeout) as resp:
                    return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
            except urllib.error.HTTPError as exc:
                body = exc.read()
                if exc.code == 401 and attempt == 0:
                    self.auth = self._authenticate(exc.headers.get("WWW-Authenticate", ""))
                    continue
                if exc.code in ok or (method == "HEAD" and exc.code == 404):
                    return exc.code, {k.lower(): v for k, v in exc.headers.items()}, body
                if exc.code == 401:
                    raise PushError(self._refused()) from None
                raise PushError(f"{self.target}: {method} {_path(url)}: HTTP {exc.code} {_reason(body, exc.reason)}") \
                    from None
            except (urllib.error.URLError, OSError) as exc:
                raise PushError(f"{self.target}: cannot reach {self.base}: {getattr(exc, 'reason', exc)}") from None
        raise PushError(self._refused())

    def _refused(self) -> str:
        if self.creds is None:
            return (f"{self.target.host} wants credentials: set ORCH_REGISTRY_USERNAME and ORCH_REGISTRY_PASSWORD "
                    f"or log in with docker login {self.target.host}")
        return f"{self.target.host} refused the credentials of user {self.creds[0]!r} (wrong password?)"

    def _authenticate(self, challenge: str) -> str:
        scheme, _, rest = challenge.partition(" ")
        if scheme.lower() == "basic":
            if self.creds is None:
                raise PushError(self._refused())
            return "Basic " + base64.b64encode(f"{self.creds[0]}:{self.creds[1]}".encode()).decode()
        if scheme.lower() != "bearer":
            raise PushError(f"{self.target.host}: unsupported authentication {scheme or '(none)'}")
        params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        realm = params.pop("realm", "")
        if not realm.startswith(("https://", "http://")):
            raise PushError(f"{self.target.host}: bad token realm in its challenge")
        params["scope"] = f"repository:{self.target.repo}:pull,push"
        req = urllib.request.Request(realm + "?" + urllib.parse.urlencode(params))
        if self.creds is not None:
            req.add_header("Authorization", "Basic " + base64.b64encode(
                f"{self.creds[0]}:{self.creds[1]}".encode()).decode())
        try:
            with self.opener(req, timeout=self.timeout) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise PushError(self._refused()) from None
            raise PushError(f"{self.target.host}: token request failed: HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise PushError(f"{self.target.host}: token request failed: {exc}") from None
        token = body.get("token") or body.get("access_token")
        if not token:
            raise PushError(f"{self.target.host}: the token service answered without a token")
        return f"Bearer {token}"

    # ------------------------------------------------------------ blobs and manifests

    def has_blob(self, digest: str) -> bool:
        status, _h, _b = self.request("HEAD", self.url(f"blobs/{digest}"))
        return status == 200

    def put_blob(self, store: Store, digest: str, size: int, chunk: int = CHUNK) -> bool:
        """Upload one blob; returns True when it went in chunks."""
        _s, headers, _b = self.request("POST", self.url("blobs/uploads/"), data=b"",
                                       headers={"Content-Length": "0"})
        location = self._location(headers)
        chunked = size > chunk
        with store.open_blob(digest) as fh:
            if chunked:
                offset = 0
                while offset < size:
                    data = fh.read(chunk)
                    _s, headers, _b = self.request("PATCH", location, data=data, headers={
                        "Content-Type": "application/octet-stream", "Content-Length": str(len(data)),
                        "Content-Range": f"{offset}-{offset + len(data) - 1}"})
                    location = self._location(headers)
                    offset += len(data)
                body = b""
            else:
                body = fh.read()
        sep = "&" if "?" in location else "?"
        self.request("PUT", f"{location}{sep}digest={urllib.parse.quote(digest)}", data=body,
                     headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(body))},
                     ok=(201, 204))
        return chunked

    def _location(self, headers: Mapping[str, str]) -> str:
        location = headers.get("location")
        if not location:
            raise PushError(f"{self.target.host}: upload answered without a Location")
        return urllib.parse.urljoin(self.base + "/", location)

    def put_manifest(self, reference: str, data: bytes, media_type: str) -> None:
        self.request("PUT", self.url(f"manifests/{reference}"), data=data,
                     headers={"Content-Type": media_type, "Content-Length": str(len(data))}, ok=(201, 204))


def push_index(store: Store, index_digest: str, ref: str, *, insecure: bool = False,
               environ: Optional[Mapping[str, str]] = None, chunk: int = CHUNK,
               progress: Optional[Callable[[str, int, int], None]] = None, opener=None) -> PushReport:
    """Push an image index (and everything it names) from the store to ``ref``."""
    target = Target.parse(ref)
    reg = Registry(target, credentials(target.host, environ), insecure,
                   **({"opener": opener} if opener else {}))
    report = PushReport(target=str(target), index=index_digest)
    manifests = store.manifests_of(index_digest)
    blobs: List[Tuple[str, int]] = []
    for manifest_digest in manifests.values():
        for digest, size in store.blobs_for(manifest_digest)[1:]:
            if digest not in [d for d, _ in blobs]:
                blobs.append((digest, size))
    report.blobs = len(blobs)
    for n, (digest, size) in enumerate(blobs, start=1):
        if reg.has_blob(digest):
            continue
        if progress:
            progress(digest, n, len(blobs))
        if reg.put_blob(store, digest, size, chunk):
            report.chunked += 1
        report.sent += 1
        report.bytes_sent += size
        report.sent_digests.append(digest)
    for manifest_digest in manifests.values():
        reg.put_manifest(manifest_digest, store.read_bytes(manifest_digest), MT_MANIFEST)
        report.manifests += 1
    reg.put_manifest(target.tag, store.read_bytes(index_digest), MT_INDEX)
    return report


def _path(url: str) -> str:
    return urllib.parse.urlsplit(url).path


def _reason(body: bytes, default: str) -> str:
    try:
        errors = json.loads(body).get("errors") or []
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors) or default
    except (ValueError, AttributeError):
        return default
