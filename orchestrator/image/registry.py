"""Reading images from an OCI image layout directory or a registry (distribution API, urllib).

Both sources answer the same two questions: ``manifest(ref) -> (bytes, media_type, digest)``
and ``blob(digest) -> stream``; ``select_platform`` walks an index down to one platform's
manifest, and ``import_image`` copies that image's layers into the store, verifying digests.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from orchestrator.errors import BuildError
from orchestrator.image.store import (INDEX_TYPES, MANIFEST_TYPES, MT_DOCKER_LIST, MT_DOCKER_MANIFEST,
                                MT_INDEX, MT_LAYER_GZIP, MT_LAYER_TAR, MT_MANIFEST, REF_NAME, Store)
from runtime import protocol

ACCEPT = ", ".join([MT_INDEX, MT_MANIFEST, MT_DOCKER_LIST, MT_DOCKER_MANIFEST])
_DOCKER_LAYER = {"application/vnd.docker.image.rootfs.diff.tar.gzip": MT_LAYER_GZIP,
                 "application/vnd.docker.image.rootfs.diff.tar": MT_LAYER_TAR}


_sha256 = protocol.sha256_digest    # the one digest helper (runtime/protocol.py)


@dataclass(frozen=True)
class ImportedImage:
    manifest_digest: str             # the platform manifest of the source
    config: Dict[str, Any]           # the source's full image config
    layers: List[Dict[str, Any]]     # [{digest, diff_id, size, media_type}], now in the store


class LayoutSource:
    """An OCI image layout on disk (``{oci: DIR[:TAG]}``)."""

    def __init__(self, directory: str, tag: Optional[str]):
        self.directory, self.tag = directory, tag

    def describe(self) -> str:
        return f"oci:{self.directory}" + (f":{self.tag}" if self.tag else "")

    def _read(self, digest: str) -> bytes:
        algo, _, hexd = digest.partition(":")
        try:
            with open(os.path.join(self.directory, "blobs", algo, hexd), "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise BuildError(f"{self.describe()}: missing blob {digest}: {exc.strerror}") from None
        if _sha256(data) != digest:
            raise BuildError(f"{self.describe()}: blob {digest} is corrupt")
        return data

    def top(self) -> Tuple[bytes, str, str]:
        try:
            with open(os.path.join(self.directory, "index.json"), "rb") as fh:
                index = json.load(fh)
        except (OSError, ValueError) as exc:
            raise BuildError(f"{self.describe()}: cannot read index.json: {exc}") from None
        entries = index.get("manifests", [])
        if self.tag:
            entries = [m for m in entries if m.get("annotations", {}).get(REF_NAME) == self.tag]
            if not entries:
                raise BuildError(f"{self.describe()}: no image tagged {self.tag!r}")
        if len(entries) != 1:
            tags = sorted(m.get("annotations", {}).get(REF_NAME, "?") for m in entries)
            raise BuildError(f"{self.describe()}: {len(entries)} images, name one with DIR:TAG "
                             f"(tags: {', '.join(tags) or 'none'})")
        entry = entries[0]
        return self._read(entry["digest"]), entry.get("mediaType", ""), entry["digest"]

    def manifest(self, digest: str) -> Tuple[bytes, str, str]:
        data = self._read(digest)
        return data, json.loads(data).get("mediaType", ""), digest

    def blob(self, digest: str):
        algo, _, hexd = digest.partition(":")
        return open(os.path.join(self.directory, "blobs", algo, hexd), "rb")


_REF = re.compile(r"^(?P<host>\[[0-9a-fA-F:]+\](?::\d+)?|[^/]+)/(?P<repo>[^:@]+)"
                  r"(?::(?P<tag>[^@]+))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$")


class RegistrySource:
    """A registry speaking the OCI distribution API (``{registry: REF}``); anonymous or token auth."""

    def __init__(self, ref: str, insecure: bool = False, timeout: float = 30.0):
        m = _REF.match(ref)
        if not m:
            raise BuildError(f"bad registry reference {ref!r}")
        self.ref, self.host, self.repo = ref, m.group("host"), m.group("repo")
        self.reference = m.group("digest") or m.group("tag") or "latest"
        self.scheme = "http" if insecure or _is_loopback(self.host) else "https"
        self.timeout = timeout
        self._token: Optional[str] = None

    def describe(self) -> str:
        return self.ref

    def _url(self, kind: str, ref: str) -> str:
        return f"{self.scheme}://{self.host}/v2/{self.repo}/{kind}/{ref}"

    def _open(self, url: str, accept: Optional[str] = None):
        for attempt in range(2):
            req = urllib.request.Request(url)
            if accept:
                req.add_header("Accept", accept)
            if self._token:
                req.add_header("Authorization", f"Bearer {self._token}")
            try:
                return urllib.request.urlopen(req, timeout=self.timeout)
            except urllib.error.HTTPError as exc:
                if exc.code == 401 and attempt == 0 and not self._token:
                    self._token = self._fetch_token(exc.headers.get("WWW-Authenticate", ""))
                    if self._token:
                        continue
                raise BuildError(f"{self.ref}: GET {url}: HTTP {exc.code} {exc.reason}") from None
            except (urllib.error.URLError, OSError) as exc:
                raise BuildError(f"{self.ref}: cannot reach {self.scheme}://{self.host}: "
                                 f"{getattr(exc, 'reason', exc)}") from None
        raise BuildError(f"{self.ref}: authentication failed")

    def _fetch_token(self, challenge: str) -> Optional[str]:
        if not challenge.lower().startswith("bearer "):
            return None
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        realm = params.pop("realm", None)
        if not realm:
            return None
        url = realm + "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as resp:
                body = json.load(resp)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise BuildError(f"{self.ref}: token request failed: {exc}") from None
        return body.get("token") or body.get("access_token")

    def top(self) -> Tuple[bytes, str, str]:
        return self.manifest(self.reference)

    def manifest(self, ref: str) -> Tuple[bytes, str, str]:
        with self._open(self._url("manifests", ref), ACCEPT) as resp:
            data = resp.read()
            media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        digest = _sha256(data)
        if ref.startswith("sha256:") and digest != ref:
            raise BuildError(f"{self.ref}: manifest digest mismatch ({digest} != {ref})")
        return data, media_type or json.loads(data).get("mediaType", ""), digest

    def blob(self, digest: str):
        return self._open(self._url("blobs", digest))


def _is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:host.index("]")]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def platform_of(entry: Dict[str, Any]) -> str:
    p = entry.get("platform", {})
    out = f"{p.get('os', '')}/{p.get('architecture', '')}"
    return out + (f"/{p['variant']}" if p.get("variant") else "")


def _platform_matches(found: str, wanted: str) -> bool:
    if found == wanted:
        return True
    return wanted == "linux/arm64" and found == "linux/arm64/v8"


def select_platform(source, platform: str) -> Tuple[Dict[str, Any], str]:
    """Walk from the source's top manifest (or index) to the manifest for ``platform``."""
    data, media_type, digest = source.top()
    doc = json.loads(data)
    media_type = media_type if media_type in INDEX_TYPES + MANIFEST_TYPES else doc.get("mediaType", "")
    for _ in range(4):
        if media_type in INDEX_TYPES or ("manifests" in doc and "config" not in doc):
            entries = doc.get("manifests", [])
            match = [m for m in entries if _platform_matches(platform_of(m), platform)]
            if not match and len(entries) == 1 and "platform" not in entries[0]:
                match = entries
            if not match:
                have = ", ".join(sorted(platform_of(m) for m in entries)) or "none"
                raise BuildError(f"{source.describe()}: no image for {platform} (it has: {have})")
            data, media_type, digest = source.manifest(match[0]["digest"])
            doc = json.loads(data)
            media_type = media_type if media_type in INDEX_TYPES + MANIFEST_TYPES else doc.get("mediaType", "")
            continue
        return doc, digest
    raise BuildError(f"{source.describe()}: image indexes nested too deep")


def import_image(source, platform: str, store: Store) -> ImportedImage:
    """Copy one platform image's layers from a source into the store (verified)."""
    manifest, digest = select_platform(source, platform)
    if "config" not in manifest:
        raise BuildError(f"{source.describe()}: {digest} is not an image manifest")
    with source.blob(manifest["config"]["digest"]) as fh:
        config_bytes = fh.read()
    if _sha256(config_bytes) != manifest["config"]["digest"]:
        raise BuildError(f"{source.describe()}: config blob digest mismatch")
    config = json.loads(config_bytes)
    arch = config.get("architecture")
    want_arch = {"linux/amd64": "amd64", "linux/arm64": "arm64", "linux/arm/v7": "arm"}[platform]
    if arch and arch != want_arch:
        raise BuildError(f"{source.describe()}: image is for {config.get('os')}/{arch}, not {platform}")
    diff_ids = config.get("rootfs", {}).get("diff_ids", [])
    if len(diff_ids) != len(manifest.get("layers", [])):
        raise BuildError(f"{source.describe()}: config lists {len(diff_ids)} diff_ids for "
                         f"{len(manifest.get('layers', []))} layers")
    layers = []
    for desc, diff_id in zip(manifest.get("layers", []), diff_ids):
        media_type = _DOCKER_LAYER.get(desc.get("mediaType"), desc.get("mediaType", MT_LAYER_GZIP))
        if media_type not in (MT_LAYER_GZIP, MT_LAYER_TAR):
            raise BuildError(f"{source.describe()}: unsupported layer type {desc.get('mediaType')}")
        if not store.has(desc["digest"]):
            with source.blob(desc["digest"]) as fh:
                store.put_stream(fh, expected=desc["digest"])
        layers.append({"digest": desc["digest"], "diff_id": diff_id, "size": store.size(desc["digest"]),
                       "media_type": media_type})
    return ImportedImage(manifest_digest=digest, config=config, layers=layers)
