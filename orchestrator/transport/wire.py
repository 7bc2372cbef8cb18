"""The sending side of ``runtime/wire.py``: a layer as an xz-compressed recipe, deduplicated
against every file of the layers the host already holds.

Which contents the host holds: the host's ``have`` answer lists its stored layers (diff_id and
blob); this machine indexes the files of those layers from its own copies (kept per diff_id
under ``$ORCH_HOME/store/wire/``) and refers to any file of the new layer with the same
sha256. It costs the link nothing beyond that list; a layer this machine no longer has only
means fewer references. The host verifies everything, so a wrong guess is refused, never used.
Recipes with no reference (a host that holds nothing of it) are cached by diff_id, so a fleet
compresses each layer once. Chunks are compressed in parallel (2 threads: lzma releases the
GIL) and sent as they are ready.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import lzma
import os
import queue
import struct
import tarfile
import tempfile
import threading
from dataclasses import field
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple

from orchestrator.image.store import Store
from runtime import wire as host_wire
from runtime.records import Mutable, Record, mutable, record

SEGMENT = 16 << 20              # recipe bytes per xz chunk at most (each compressed on its own)
FIRST_SEGMENT = 1 << 20
PRESET = 9                      # 64 MiB dictionary at most (a chunk of 16 MiB uses ~17 MiB)
THREADS = 2


@record
class LayerInfo(Record):
    blob: str
    diff_id: str
    lowers: Tuple[Tuple[str, str], ...]       # (diff_id, blob) beneath it, bottom first
    platform: str = ""


@mutable
class WireJob(Mutable):
    """How one deploy ships: the local store, the layers of the manifests being shipped (by
    blob digest), whether layers go as recipes, and the bandwidth cap shared by all hosts."""
    store: Store
    layers: Dict[str, List[LayerInfo]] = field(default_factory=dict)
    recipes: bool = True
    limit: Optional[object] = None            # shipper.RateLimit


def wire_job(store: Store, fleet, manifests: Mapping[str, str]) -> Optional[WireJob]:
    """The fleet's transfer settings as a job (None: gzip blobs at full speed, the LAN path).
    ``wire: auto`` sends recipes when the fleet declares its uplink (``bandwidth``) or is a lab
    with a throttled ``link_rate``; ``xz`` always; ``gzip`` never."""
    from orchestrator.manifest.units import rate_bytes
    from orchestrator.transport.shipper import RateLimit
    mode = getattr(fleet, "wire", "auto") or "auto"
    bandwidth = getattr(fleet, "bandwidth", None)
    slow = bandwidth is not None or bool(getattr(getattr(fleet, "lab", None), "link_rate", None))
    recipes = mode == "xz" or (mode == "auto" and slow)
    if not recipes and bandwidth is None:
        return None
    limit = RateLimit(rate_bytes(bandwidth)) if bandwidth is not None else None
    return WireJob(store, layer_infos(store, manifests) if recipes else {}, recipes, limit)


def layer_infos(store: Store, manifests: Mapping[str, str]) -> Dict[str, List[LayerInfo]]:
    """blob digest -> its LayerInfo in each image of these manifests ({digest: platform}) with
    other lowers (a layer shared by an arm64 and an armv7 image sits on other bases)."""
    out: Dict[str, List[LayerInfo]] = {}
    for manifest, platform in manifests.items():
        m = store.read_json(manifest)
        cfg = store.read_json(m["config"]["digest"])
        diff_ids = list((cfg.get("rootfs") or {}).get("diff_ids") or [])
        blobs = [x["digest"] for x in m.get("layers", [])]
        if len(diff_ids) != len(blobs):
            continue                      # the host refuses such an image anyway
        for i, (blob, diff_id) in enumerate(zip(blobs, diff_ids)):
            info = LayerInfo(blob, diff_id, tuple(zip(diff_ids[:i], blobs[:i])), platform)
            if all(x.lowers != info.lowers for x in out.get(blob, [])):
                out.setdefault(blob, []).append(info)
    return out


def pick(cands: Sequence[LayerInfo], available: Set[str]) -> LayerInfo:
    """The layer's context for one host: the image whose lower layers that host holds or gets."""
    for c in cands:
        if all(b in available for _, b in c.lowers):
            return c
    return cands[0]


# --- what the host holds -----------------------------------------------------------------

def _wire_dir(store: Store, *parts: str) -> str:
    d = os.path.join(store.root, "wire", *parts)
    os.makedirs(d, exist_ok=True)
    return d


@contextlib.contextmanager
def _open_tar(store: Store, blob: str):
    """The uncompressed tar stream of a layer blob (gzip or plain)."""
    with open(store.blob_path(blob), "rb") as f:
        head = f.read(2)
        f.seek(0)
        if head != b"\x1f\x8b":
            yield f
            return
        with gzip.GzipFile(fileobj=f, mode="rb") as g:
            yield g


def file_index(store: Store, blob: str, diff_id: str) -> Dict[str, int]:
    """sha256 hex -> size of the layer's regular files of at least MIN_REF bytes (cached)."""
    path = os.path.join(_wire_dir(store, "files"), diff_id.split(":", 1)[1] + ".json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        pass
    out: Dict[str, int] = {}
    with _open_tar(store, blob) as raw, tarfile.open(fileobj=raw, mode="r|") as tf:
        for m in tf:
            if m.isfile() and m.size >= host_wire.MIN_REF and not m.sparse:
                h = hashlib.sha256()
                src = tf.extractfile(m)
                for b in iter(lambda: src.read(1 << 20), b""):
                    h.update(b)
                out[h.hexdigest()] = m.size
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(out, f)
    os.replace(tmp, path)
    return out


def known_contents(store: Store, held: Sequence[Mapping[str, str]]) -> Set[str]:
    """sha256s of the files of the layers the host says it holds, as far as this machine
    has those layers."""
    known: Set[str] = set()
    for x in held:
        blob, diff_id = x.get("blob", ""), x.get("diff_id", "")
        if blob and diff_id and store.has(blob):
            try:
                known.update(file_index(store, blob, diff_id))
            except (OSError, tarfile.TarError, EOFError, ValueError):
                continue
    return known


# --- encoding ----------------------------------------------------------------------------

def iter_recipe(store: Store, blob: str, known: Set[str]) -> Iterator[Tuple[bytes, int]]:
    """(ops bytes, references so far): the recipe of a layer, given contents the host holds."""
    with tempfile.TemporaryFile() as spool:
        with _open_tar(store, blob) as raw:       # a seekable copy for tarfile's offsets
            for b in iter(lambda: raw.read(1 << 20), b""):
                spool.write(b)
        total = spool.tell()
        spool.seek(0)
        refs: List[Tuple[int, int, bytes]] = []   # (offset, size, sha) of referenced data
        with tarfile.open(fileobj=spool, mode="r:") as tf:
            for m in tf:
                if not (m.isfile() and m.size >= host_wire.MIN_REF and not m.sparse):
                    continue
                h = hashlib.sha256()
                src = tf.extractfile(m)
                for b in iter(lambda: src.read(1 << 20), b""):
                    h.update(b)
                if h.hexdigest() in known:
                    refs.append((m.offset_data, m.size, h.digest()))
        pos = 0
        nrefs = 0

        def raw_ops(start: int, end: int) -> Iterator[bytes]:
            spool.seek(start)
            left = end - start
            while left:
                b = spool.read(min(left, 1 << 20))
                left -= len(b)
                yield host_wire.OP_RAW + struct.pack(">Q", len(b)) + b

        for offset, size, sha in refs:
            for op in raw_ops(pos, offset):
                yield op, nrefs
            nrefs += 1
            yield host_wire.OP_FILE + sha + struct.pack(">Q", size), nrefs
            pos = offset + size
        for op in raw_ops(pos, total):
            yield op, nrefs
        yield host_wire.OP_END, nrefs


def _segments(ops: Iterator[Tuple[bytes, int]], size: int = SEGMENT,
              first: int = FIRST_SEGMENT) -> Iterator[bytes]:
    """Recipe bytes in segments that double from ``first`` up to ``size``: the link gets its
    first bytes soon, and later segments are long enough for xz to find its matches."""
    buf: List[bytes] = []
    n = 0
    want = first
    for op, _ in ops:
        buf.append(op)
        n += len(op)
        if n >= want:
            yield b"".join(buf)
            buf, n = [], 0
            want = min(size, want * 2)
    if buf:
        yield b"".join(buf)


def _compress(segment: bytes, filters) -> bytes:
    return lzma.compress(segment, format=lzma.FORMAT_XZ, filters=filters)


def _filters(platform: str):
    lz = {"id": lzma.FILTER_LZMA2, "preset": PRESET}
    if platform == "linux/amd64":           # machine code compresses better after x86 BCJ
        return [{"id": lzma.FILTER_X86}, lz]
    return [lz]


def iter_chunks(store: Store, info: LayerInfo, known: Set[str]) -> Iterator[bytes]:
    """The layer frame's chunks (``<len>\\n`` + one xz stream each, then ``0\\n``), compressed
    by THREADS threads ahead of the sender; cached when it refers to nothing."""
    cache = os.path.join(_wire_dir(store, "xz"), info.diff_id.split(":", 1)[1])
    if known and not known & set(file_index(store, info.blob, info.diff_id)):
        known = set()                       # nothing to refer to: the cached form will do
    if os.path.exists(cache) and not known:
        with open(cache, "rb") as f:
            for b in iter(lambda: f.read(1 << 20), b""):
                yield b
        return
    filters = _filters(info.platform)
    out: "queue.Queue" = queue.Queue(maxsize=THREADS + 1)
    stop = threading.Event()

    def produce() -> None:
        from concurrent.futures import ThreadPoolExecutor
        try:
            with ThreadPoolExecutor(THREADS) as pool:
                pending = []
                for seg in _segments(iter_recipe(store, info.blob, known)):
                    if stop.is_set():
                        return
                    pending.append(pool.submit(_compress, seg, filters))
                    while len(pending) > THREADS:
                        out.put(pending.pop(0))
                for fut in pending:
                    out.put(fut)
            out.put(None)
        except BaseException as exc:        # handed to the sender, raised there
            out.put(exc)

    threading.Thread(target=produce, daemon=True, name=f"xz {info.diff_id[7:19]}").start()
    tmp = f"{cache}.tmp.{os.getpid()}.{threading.get_ident()}"
    keep = open(tmp, "wb") if not known else None
    try:
        while True:
            item = out.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            data = item.result()
            piece = b"%d\n" % len(data) + data
            if keep:
                keep.write(piece)
            yield piece
        if keep:
            keep.write(b"0\n")
            keep.close()
            os.replace(tmp, cache)
            keep = None
        yield b"0\n"
    finally:
        stop.set()
        if keep:
            keep.close()
            os.unlink(tmp)


def layer_header(info: LayerInfo) -> bytes:
    return json.dumps({"layer": info.diff_id, "blob": info.blob,
                       "encoding": host_wire.ENCODING,
                       "lowers": [list(x) for x in info.lowers]}).encode() + b"\n"


def iter_layer_frame(store: Store, info: LayerInfo, known: Set[str]) -> Iterator[bytes]:
    yield layer_header(info)
    yield from iter_chunks(store, info, known)


def warm(store: Store, fleet, manifests: Mapping[str, str]) -> int:
    """At build time, for a fleet whose layers travel as recipes: make each layer's wire form
    (xz, no references) once, the way its gzip blob is made once, so a first deploy over a
    slow link sends at the link's speed instead of waiting on the compressor. Returns how many
    layers were compressed now."""
    job = wire_job(store, fleet, manifests)
    if job is None or not job.recipes:
        return 0
    done = 0
    for info in (cands[0] for cands in job.layers.values()):
        if not os.path.exists(os.path.join(_wire_dir(store, "xz"), info.diff_id.split(":", 1)[1])):
            for _ in iter_chunks(store, info, set()):
                pass
            done += 1
    return done
