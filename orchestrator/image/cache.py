"""The layer cache: a build step's key -> the layer(s) it produced.

A key is a sha256 over the parent chain's key, the step's description and the content
hashes of its inputs, so a record can be reused exactly when nothing that could change the
layer changed. Records are small JSON files; the blobs stay in the content store, and a
record whose blobs are gone counts as a miss.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, Iterable, Optional, Set

from orchestrator.errors import BuildError
from orchestrator.image.store import Store, canonical_json
from runtime.errors import AgentFailure, UnsafeImage


def chain_key(*parts: Any) -> str:
    """sha256 hex of the canonical JSON of ``parts`` (the parent key is one of them)."""
    return hashlib.sha256(canonical_json(list(parts))).hexdigest()


class LayerCache:
    def __init__(self, directory: str):
        self.directory = os.path.abspath(directory)

    def _path(self, kind: str, key: str) -> str:
        return os.path.join(self.directory, kind, key[:2], key + ".json")

    def get(self, key: str, store: Store) -> Optional[Dict[str, Any]]:
        try:
            with open(self._path("steps", key), "rb") as fh:
                record = json.load(fh)
        except (FileNotFoundError, ValueError):
            return None
        if not all(store.has(layer["digest"]) for layer in record.get("layers", [])):
            return None
        return record

    def put(self, key: str, record: Dict[str, Any]) -> None:
        _write(self._path("steps", key), canonical_json(record))

    def layer_paths(self, store: Store, layer: Dict[str, Any]) -> Set[str]:
        """Every path a layer holds (for knowing which parent directories already exist)."""
        hexd = layer["diff_id"].split(":", 1)[1] if layer.get("diff_id") else layer["digest"].split(":", 1)[1]
        path = self._path("paths", hexd)
        try:
            with open(path, "rb") as fh:
                return set(json.load(fh))
        except (FileNotFoundError, ValueError):
            pass
        from runtime import unpack     # (with the agent's store and layout: ~7 ms) for builds only

        names = set()
        try:     # a base's layer is hostile input: read through the runtime's guarded reader
            with store.open_blob(layer["digest"]) as raw:
                for _, member in unpack.entries(raw):
                    name = _strip_dot(member.name.strip("/"))
                    if name not in ("", "."):
                        names.add(name)
                    if len(names) > unpack.Budget.max_files:
                        raise UnsafeImage(f"more than {unpack.Budget.max_files} entries")
        except AgentFailure as exc:
            raise BuildError(f"layer {layer['digest']}: {exc.message}") from None
        _write(path, canonical_json(sorted(names)))
        return names

    def save_paths(self, layer: Dict[str, Any], names: Iterable[str]) -> None:
        hexd = layer["diff_id"].split(":", 1)[1]
        _write(self._path("paths", hexd), canonical_json(sorted(set(names))))

    def chain_paths(self, store: Store, layers: Iterable[Dict[str, Any]]) -> Set[str]:
        out: Set[str] = set()
        for layer in layers:
            out |= self.layer_paths(store, layer)
        return out


def _strip_dot(name: str) -> str:
    return name[2:] if name.startswith("./") else name


def _write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.rename(tmp, path)
