"""The local content store: an OCI image layout addressed by digest.

``$ORCH_HOME/store`` (default ``~/.cache/orch/store``) holds ``oci-layout``, ``index.json``
and ``blobs/sha256/<hex>``. Every blob is written tmp -> fsync -> rename after its digest is
verified, so a blob that exists is whole. ``index.json`` names each service's latest index
with ``org.opencontainers.image.ref.name``, which makes the store itself readable by
skopeo/umoci (``oci:$ORCH_HOME/store:hello``).

The ship step asks ``blobs_for(manifest_digest)`` for what one host needs and
``blob_path(digest)`` for where to read it from.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Dict, Iterator, List, Mapping, Optional, Tuple

from orchestrator.errors import BuildError
from runtime import protocol

REF_NAME = "org.opencontainers.image.ref.name"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = (MT_INDEX, MT_DOCKER_LIST)
MANIFEST_TYPES = (MT_MANIFEST, MT_DOCKER_MANIFEST)
_CHUNK = 1 << 20


# Sorted keys, no spaces: the one JSON encoding of every blob orch writes (and of what a
# release id hashes): runtime/protocol.py is its one home.
canonical_json = protocol.canonical_json


def default_home() -> str:
    return os.environ.get("ORCH_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "orch")


def _hex(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        raise BuildError(f"not a sha256 digest: {digest!r}")
    return hexpart


class BlobWriter:
    """Streams one blob into the store, hashing as it goes; ``commit()`` verifies and renames."""

    def __init__(self, store: "Store"):
        self._store = store
        fd, self._tmp = tempfile.mkstemp(dir=store.tmp_dir, prefix="blob-")
        self._fh = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0
        self.digest: Optional[str] = None

    def write(self, data) -> int:
        self._fh.write(data)
        self._hash.update(data)
        self.size += len(data)
        return len(data)

    def commit(self, expected: Optional[str] = None) -> Tuple[str, int]:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        digest = "sha256:" + self._hash.hexdigest()
        if expected is not None and expected != digest:
            os.unlink(self._tmp)
            raise BuildError(f"digest mismatch: expected {expected}, got {digest}")
        final = self._store.blob_path(digest)
        if os.path.exists(final):
            os.unlink(self._tmp)
        else:
            os.chmod(self._tmp, 0o644)
            os.rename(self._tmp, final)
        self.digest = digest
        return digest, self.size

    def abort(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        if os.path.exists(self._tmp):
            os.unlink(self._tmp)


class Store:
    """An OCI image layout used as orch's content store."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)

    @classmethod
    def default(cls) -> "Store":
        return cls(os.path.join(default_home(), "store"))

    # -------------------------------------------------------- layout

    @property
    def blobs_dir(self) -> str:
        return os.path.join(self.root, "blobs", "sha256")

    @property
    def tmp_dir(self) -> str:
        self.ensure()
        path = os.path.join(self.root, ".tmp")
        os.makedirs(path, exist_ok=True)
        return path

    def ensure(self) -> "Store":
        os.makedirs(os.path.join(self.root, "blobs", "sha256"), exist_ok=True)
        layout = os.path.join(self.root, "oci-layout")
        if not os.path.exists(layout):
            _atomic_write(layout, canonical_json({"imageLayoutVersion": "1.0.0"}))
        index = os.path.join(self.root, "index.json")
        if not os.path.exists(index):
            _atomic_write(index, canonical_json({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": []}))
        return self

    # -------------------------------------------------------- blobs

    def blob_path(self, digest: str) -> str:
        return os.path.join(self.blobs_dir, _hex(digest))

    def has(self, digest: str) -> bool:
        return os.path.isfile(self.blob_path(digest))

    def size(self, digest: str) -> int:
        return os.path.getsize(self.blob_path(digest))

    def writer(self) -> BlobWriter:
        return BlobWriter(self)

    def put_bytes(self, data: bytes, expected: Optional[str] = None) -> str:
        digest = protocol.sha256_digest(data)
        if expected is not None and expected != digest:
            raise BuildError(f"digest mismatch: expected {expected}, got {digest}")
        if self.has(digest):
            return digest
        w = self.writer()
        w.write(data)
        return w.commit(digest)[0]

    def put_json(self, obj) -> Tuple[str, int]:
        data = canonical_json(obj)
        return self.put_bytes(data), len(data)

    def put_stream(self, stream, expected: Optional[str] = None) -> Tuple[str, int]:
        w = self.writer()
        try:
            while True:
                chunk = stream.read(_CHUNK)
                if not chunk:
                    break
                w.write(chunk)
            return w.commit(expected)
        except BaseException:
            w.abort()
            raise

    def read_bytes(self, digest: str) -> bytes:
        try:
            with open(self.blob_path(digest), "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            raise BuildError(f"blob {digest} is not in the store {self.root}") from None

    def read_json(self, digest: str):
        return json.loads(self.read_bytes(digest))

    @contextmanager
    def open_blob(self, digest: str) -> Iterator:
        with open(self.blob_path(digest), "rb") as fh:
            yield fh

    # -------------------------------------------------------- images

    def blobs_for(self, manifest_digest: str) -> List[Tuple[str, int]]:
        """[(digest, size)] a host needs for one platform image: manifest, config, layers."""
        manifest = self.read_json(manifest_digest)
        out = [(manifest_digest, self.size(manifest_digest)),
               (manifest["config"]["digest"], manifest["config"]["size"])]
        out += [(layer["digest"], layer["size"]) for layer in manifest.get("layers", [])]
        return out

    def manifests_of(self, index_digest: str) -> Dict[str, str]:
        """{platform: manifest digest} of an image index written by orch."""
        index = self.read_json(index_digest)
        out = {}
        for m in index["manifests"]:
            p = m.get("platform", {})
            name = f"{p.get('os')}/{p.get('architecture')}" + (f"/{p['variant']}" if p.get("variant") else "")
            out[name] = m["digest"]
        return out

    def blobs_for_index(self, index_digest: str) -> List[Tuple[str, int]]:
        """The index itself and every blob of every platform image, each once."""
        seen, out = set(), [(index_digest, self.size(index_digest))]
        for manifest in self.manifests_of(index_digest).values():
            for d, s in self.blobs_for(manifest):
                if d not in seen:
                    seen.add(d)
                    out.append((d, s))
        return out

    # -------------------------------------------------------- names

    @contextmanager
    def _locked_index(self):
        self.ensure()
        with open(os.path.join(self.root, ".index.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            path = os.path.join(self.root, "index.json")
            with open(path, "rb") as fh:
                raw = fh.read()
            index = json.loads(raw)
            yield index
            new = canonical_json(index)
            if new != raw:           # a build that changed nothing writes (and fsyncs) nothing
                _atomic_write(path, new)

    def tag(self, name: str, index_digest: str) -> None:
        """Point ``name`` (a service) at an image index in ``index.json``."""
        entry = {"mediaType": MT_INDEX, "digest": index_digest, "size": self.size(index_digest),
                 "annotations": {REF_NAME: name}}
        with self._locked_index() as index:
            keep = [m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) != name]
            index["manifests"] = sorted(keep + [entry], key=lambda m: m["annotations"][REF_NAME])

    def tags(self) -> Dict[str, str]:
        self.ensure()
        with open(os.path.join(self.root, "index.json"), "rb") as fh:
            index = json.load(fh)
        return {m["annotations"][REF_NAME]: m["digest"] for m in index["manifests"]
                if m.get("annotations", {}).get(REF_NAME)}

    def resolve(self, name: str) -> Optional[str]:
        return self.tags().get(name)

    def export_layout(self, out_dir: str, images: Mapping[str, str]) -> None:
        """Write a standalone OCI layout with one index.json entry per ``{name: index_digest}``."""
        out = Store(out_dir).ensure()
        for name, index_digest in sorted(images.items()):
            for digest, _size in self.blobs_for_index(index_digest):
                if out.has(digest):
                    continue
                target = out.blob_path(digest)
                tmp = target + ".tmp"
                try:
                    os.link(self.blob_path(digest), tmp)
                except OSError:
                    shutil.copyfile(self.blob_path(digest), tmp)
                os.rename(tmp, target)
            out.tag(name, index_digest)
        for leftover in (".index.lock", ".tmp"):
            p = os.path.join(out.root, leftover)
            if os.path.isdir(p):
                shutil.rmtree(p, ignore_errors=True)
            elif os.path.exists(p):
                os.unlink(p)


def _atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(tmp, path)
