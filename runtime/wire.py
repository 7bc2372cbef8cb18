"""Layers over a slow link: a layer arrives as a *recipe* (its uncompressed tar stream, where
the content of a file the host already holds is a reference to it by sha256) compressed with
xz, and goes straight into the layer store, verified against its diff_id.

A layer frame in a ``receive`` stream is one header line, then chunks, then an end chunk::

    {"layer": DIFF_ID, "blob": DIGEST, "encoding": "recipe+xz", "lowers": [[DIFF_ID, DIGEST], ...]}
    <decimal length>\\n<one complete xz stream of that many bytes>   (repeated)
    0\\n

Each chunk is an independent xz stream (the sender compresses chunks in parallel); decoded and
concatenated they are the recipe: ops ``R`` + 8-byte big-endian length + raw bytes, ``F`` +
32-byte sha256 + 8-byte size (the content of a file the host holds), and ``E`` (the end).
The host rebuilds the tar stream from the recipe and unpacks it as it is rebuilt (no copy of
the tar on disk), on the layer's lower layers (``lowers``, bottom first; each is in the layer
store already, or its blob is here and it is unpacked first). Every referenced file is hashed
as it is read and must match; the rebuilt stream must hash to the diff_id; the layer is
renamed into the store only then. A reference to content the host does not hold, a file whose
content changed, a diff_id that differs, a bomb beyond the unpack budget: the frame is refused,
named, and nothing of it stays. No gzip blob is kept: the stored layer stands for it (``have``).
"""
from __future__ import annotations

import hashlib
import json
import lzma
import os
import shutil
import struct
from typing import BinaryIO, Dict, List, Optional, Sequence, Tuple

from runtime import layers, protocol, store, unpack
from runtime.errors import AgentFailure, BadRequest, DigestMismatch, MissingBlob, UnsafeImage
from runtime.layout import Layout, write_json

ENCODING = "recipe+xz"
MAX_CHUNK = 64 << 20            # compressed bytes of one chunk
XZ_MEMLIMIT = 256 << 20         # decoder memory: a 64 MiB dictionary needs about 65 MiB
MIN_REF = 128                   # smaller files travel inline: a reference is 41 bytes
CHUNK = 1 << 20
OP_RAW, OP_FILE, OP_END = b"R", b"F", b"E"


def is_layer_frame(line: bytes) -> bool:
    if b'"layer"' not in line:
        return False
    try:
        return "layer" in json.loads(line)
    except (ValueError, TypeError):
        return False


def parse_header(line: bytes) -> Tuple[str, str, List[Tuple[str, str]]]:
    try:
        head = json.loads(line)
        diff_id, blob, encoding = head["layer"], head["blob"], head["encoding"]
        lowers = [(str(d), str(b)) for d, b in head.get("lowers", [])]
    except (ValueError, KeyError, TypeError) as exc:
        raise BadRequest(f"bad layer frame header: {line[:200]!r}") from exc
    if encoding != ENCODING:
        raise BadRequest(f"layer {diff_id}: unknown encoding {encoding!r} (known: {ENCODING})")
    for d in [diff_id, blob] + [x for pair in lowers for x in pair]:
        try:
            protocol.split_digest(d)
        except ValueError as exc:
            raise BadRequest(f"layer frame: {exc}") from None
    return diff_id, blob, lowers


class Cut(UnsafeImage):
    """The stream ended inside a layer frame (a dropped link): the sender tries again."""


class Chunks:
    """The frame's chunks from the stream, each decoded as one whole xz stream; ``read``
    gives the decoded recipe. ``drain`` skips the rest of the frame (after a refusal)."""

    def __init__(self, stream: BinaryIO, where: str):
        self.stream, self.where = stream, where
        self.dec: Optional[lzma.LZMADecompressor] = None
        self.left = 0              # compressed bytes of the current chunk not yet read
        self.buf = b""
        self.done = False

    def _next_chunk(self) -> bool:
        line = self.stream.readline(32)
        if not line:
            raise Cut(f"{self.where}: the stream ended inside the frame")
        try:
            n = int(line)
        except ValueError:
            raise BadRequest(f"{self.where}: bad chunk length {line[:32]!r}") from None
        if n < 0 or n > MAX_CHUNK:
            raise BadRequest(f"{self.where}: chunk of {n} bytes (at most {MAX_CHUNK})")
        if n == 0:
            self.done = True
            return False
        self.left = n
        self.dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=XZ_MEMLIMIT)
        return True

    def read(self, n: int = -1) -> bytes:
        n = CHUNK if n is None or n < 0 else n
        while len(self.buf) < n and not self.done:
            if self.dec is None or (self.dec.eof and not self.left):
                if self.dec is not None and self.dec.unused_data:
                    raise UnsafeImage(f"{self.where}: data after the end of an xz chunk")
                if not self._next_chunk():
                    break
            if self.dec.needs_input:
                if not self.left:
                    raise UnsafeImage(f"{self.where}: an xz chunk ends before its stream does")
                data = self.stream.read(min(self.left, CHUNK))
                if not data:
                    raise Cut(f"{self.where}: the stream ended inside a chunk")
                self.left -= len(data)
            else:
                data = b""
            try:
                self.buf += self.dec.decompress(data, max_length=max(n - len(self.buf), 1))
            except lzma.LZMAError as exc:
                raise UnsafeImage(f"{self.where}: bad xz data: {exc}") from None
            if self.dec.eof and self.left:
                raise UnsafeImage(f"{self.where}: data after the end of an xz chunk")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            b = self.read(n - len(out))
            if not b:
                raise UnsafeImage(f"{self.where}: the recipe ends early")
            out += b
        return out

    def drain(self) -> None:
        """Skip the rest of this frame's chunks without decoding them."""
        while not self.done:
            while self.left:
                b = self.stream.read(min(self.left, CHUNK))
                if not b:
                    self.done = True
                    return
                self.left -= len(b)
            self.dec = None
            if not self._next_chunk():
                return


class Rebuilt:
    """The layer's tar stream, rebuilt from the recipe: raw bytes as they come, referenced
    file contents read from the layer store and checked against their sha256 as they go."""

    def __init__(self, recipe: Chunks, resolve, where: str):
        self.recipe, self.resolve, self.where = recipe, resolve, where
        self.raw_left = 0
        self.file: Optional[BinaryIO] = None
        self.file_left = 0
        self.file_sha = b""
        self.hasher = None
        self.ended = False
        self.refs = 0

    def _op(self) -> None:
        op = self.recipe.read_exact(1)
        if op == OP_RAW:
            (self.raw_left,) = struct.unpack(">Q", self.recipe.read_exact(8))
        elif op == OP_FILE:
            sha = self.recipe.read_exact(32)
            (size,) = struct.unpack(">Q", self.recipe.read_exact(8))
            path = self.resolve(sha.hex())
            if path is None:
                raise MissingBlob(f"{self.where}: refers to content sha256:{sha.hex()} this "
                                  "host does not hold; refusing the layer")
            self.file = open(path, "rb")
            self.file_left, self.file_sha = size, sha
            self.hasher = hashlib.sha256()
            self.refs += 1
        elif op == OP_END:
            self.ended = True
            if self.recipe.read(1):
                raise UnsafeImage(f"{self.where}: data after the end of the recipe")
        else:
            raise UnsafeImage(f"{self.where}: bad recipe op {op!r}")

    def _close_file(self) -> None:
        extra = self.file.read(1)
        self.file.close()
        self.file = None
        if extra or self.hasher.digest() != self.file_sha:
            raise DigestMismatch(f"{self.where}: the host's copy of sha256:{self.file_sha.hex()} "
                                 "does not hold that content; refusing the layer")

    def read(self, n: int = -1) -> bytes:
        n = CHUNK if n is None or n < 0 else n
        while not self.ended:
            if self.raw_left:
                b = self.recipe.read(min(n, self.raw_left))
                if not b:
                    raise UnsafeImage(f"{self.where}: the recipe ends inside raw bytes")
                self.raw_left -= len(b)
                return b
            if self.file is not None:
                if self.file_left:
                    b = self.file.read(min(n, self.file_left))
                    if not b:
                        raise DigestMismatch(f"{self.where}: the host's copy of "
                                             f"sha256:{self.file_sha.hex()} is short")
                    self.file_left -= len(b)
                    self.hasher.update(b)
                    return b
                self._close_file()
                continue
            self._op()
        return b""

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


# --- what the host holds -----------------------------------------------------------------

def _layer_files(layout: Layout, diff_id: str) -> Dict[str, str]:
    """sha256 -> path (relative to the layer's fs) of the layer's regular files of at least
    MIN_REF bytes; computed once and kept beside the layer (files.json)."""
    index = os.path.join(layers.layer_dir(layout, diff_id), "files.json")
    try:
        with open(index) as f:
            return json.load(f)
    except (OSError, ValueError):
        pass
    fs = layers.fs_of(layout, diff_id)
    out: Dict[str, str] = {}
    for dirpath, _, files in os.walk(fs):
        for name in files:
            p = os.path.join(dirpath, name)
            if os.path.islink(p) or not os.path.isfile(p) or os.path.getsize(p) < MIN_REF:
                continue
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for b in iter(lambda: f.read(CHUNK), b""):
                    h.update(b)
            out.setdefault(h.hexdigest(), os.path.relpath(p, fs))
    write_json(index, out)
    return out


def resolver(layout: Layout):
    """A function sha256 hex -> a path in the layer store holding that content (or None),
    looking through every stored layer, each indexed once."""
    cache: Dict[str, str] = {}
    loaded = [False]

    def resolve(sha: str) -> Optional[str]:
        if not loaded[0]:
            for diff_id in sorted(layers.by_blob(layout).values()):
                fs = layers.fs_of(layout, diff_id)
                for h, rel in _layer_files(layout, diff_id).items():
                    cache.setdefault(h, os.path.join(fs, rel))
            loaded[0] = True
        return cache.get(sha)
    return resolve


# --- receiving ---------------------------------------------------------------------------

def _ensure_lowers(layout: Layout, lowers: Sequence[Tuple[str, str]], budget, where: str
                   ) -> List[str]:
    """The lower layers' fs directories, top first; a lower that is only a blob here is
    unpacked from it first."""
    out: List[str] = []
    meter = unpack.Meter(layout.root, budget)
    for i, (diff_id, blob) in enumerate(lowers, 1):
        if not layers.is_present(layout, diff_id):
            if not store.check_blob(layout, blob):
                raise MissingBlob(f"{where}: its lower layer {diff_id} is not on this host")
            layers.unpack_layer(layout, {"digest": blob}, diff_id, out, meter,
                                f"{where}: lower layer {i}/{len(lowers)} {blob}")
        out.insert(0, layers.fs_of(layout, diff_id))
    return out


def receive_layer(layout: Layout, line: bytes, stream: BinaryIO) -> str:
    """One layer frame (header ``line`` already read) into the layer store; returns its blob
    digest. On refusal the rest of the frame is skipped and the error raised."""
    diff_id, blob, lowers = parse_header(line)
    where = f"layer {diff_id} (blob {blob})"
    chunks = Chunks(stream, where)
    if layers.is_present(layout, diff_id):
        chunks.drain()
        return blob
    budget = unpack.load_budget(layout.config)
    dest = layers.layer_dir(layout, diff_id)
    tmp = f"{dest}.tmp-{os.getpid()}"
    rebuilt = None
    try:
        lower_dirs = _ensure_lowers(layout, lowers, budget, where)
        layers.ensure_root(layout)
        shutil.rmtree(tmp, ignore_errors=True)
        os.mkdir(tmp, 0o700)
        fs = os.path.join(tmp, "fs")
        os.mkdir(fs, 0o755)
        rebuilt = Rebuilt(chunks, resolver(layout), where)
        try:      # apply_layer reads the rebuilt stream to its end (the recipe's E op)
            got = unpack.apply_layer(fs, rebuilt, None, unpack.Meter(layout.root, budget),
                                     unpack.Stack(fs, lower_dirs))
        except AgentFailure as exc:
            raise type(exc)(exc.message if exc.message.startswith(where)
                            else f"{where}: {exc.message}", **exc.extra) from None
        if not (rebuilt.ended and chunks.done):
            raise UnsafeImage(f"{where}: the recipe does not end where its tar does")
        if got != diff_id:
            raise DigestMismatch(f"{where}: rebuilt, it hashes to {got}, not to its diff_id; "
                                 "refusing it")
        with open(os.path.join(tmp, "blob"), "w") as f:
            f.write(blob + "\n")
        os.rename(tmp, dest)
    except BaseException:
        if rebuilt is not None:
            rebuilt.close()
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            chunks.drain()
        except (OSError, AgentFailure):
            pass
        raise
    return blob
