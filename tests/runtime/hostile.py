"""Hostile layers made in the tests themselves: decompression bombs, sparse files, oversized
headers, escaping entries, and a writer for OCI image layouts holding them."""
from __future__ import annotations

import functools
import gzip
import io
import json
import os
import subprocess
import tarfile
import zlib
from typing import Dict, Iterable, Optional

from tests.runtime import imagekit as ik

CHUNK = 8 << 20


def _gz(data: bytes) -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, compresslevel=9) as g:
        g.write(data)
    return out.getvalue()


def _gf2_times(mat, vec: int) -> int:
    out, i = 0, 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _gf2_square(mat):
    return [_gf2_times(mat, mat[n]) for n in range(32)]


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of A+B from crc(A), crc(B) and len(B): zlib's crc32_combine (GF(2) matrices
    for "append len2 zero bytes"), so the CRC of gigabytes of zeros costs no pass over them."""
    if len2 <= 0:
        return crc1
    odd = [0xEDB88320] + [1 << n for n in range(31)]   # one zero bit
    even = _gf2_square(odd)                              # two
    odd = _gf2_square(even)                              # four
    while True:
        even = _gf2_square(odd)
        if len2 & 1:
            crc1 = _gf2_times(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = _gf2_square(even)
        if len2 & 1:
            crc1 = _gf2_times(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return crc1 ^ crc2


_CHUNK_DEFLATE: Dict[int, bytes] = {}


def _deflated_zeros(n: int = CHUNK) -> bytes:
    """``n`` zeros as a byte-aligned run of deflate blocks (after a full flush the compressor
    emits the same bytes for the same input: repeat it to make any size)."""
    if n not in _CHUNK_DEFLATE:
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        c.compress(bytes(n))
        c.flush(zlib.Z_FULL_FLUSH)
        _CHUNK_DEFLATE[n] = c.compress(bytes(n)) + c.flush(zlib.Z_FULL_FLUSH)
    return _CHUNK_DEFLATE[n]


@functools.lru_cache(maxsize=None)
def _crc_of_zeros(n: int) -> int:
    # crc(zeros(a+b)) = combine(crc(zeros(a)), crc(zeros(b)), b); double up from one byte
    result = None
    piece, size = zlib.crc32(bytes(1)), 1
    while n:
        if n & 1:
            result = piece if result is None else crc32_combine(result, piece, size)
        piece, size = crc32_combine(piece, piece, size), size * 2
        n >>= 1
    return result if result is not None else 0


def zeros_bomb(total: int, name: str = "zeros", files: int = 1) -> bytes:
    """One gzip member holding a tar of ``files`` files of zeros, ``total`` bytes in all:
    about 1000x smaller than what it unpacks to (a 10 GB bomb is ~10 MB, made in a second).
    Sizes per file are multiples of 8 MiB, or below it."""
    per = total // files
    assert per % CHUNK == 0 or per < CHUNK
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    body, crc, length = [], 0, 0

    def plain(data: bytes) -> None:
        nonlocal crc, length
        body.append(c.compress(data))
        body.append(c.flush(zlib.Z_FULL_FLUSH))
        crc = zlib.crc32(data, crc)
        length += len(data)

    for i in range(files):
        ti = tarfile.TarInfo(f"{name}-{i}" if files > 1 else name)
        ti.size, ti.mode, ti.mtime = per, 0o644, 0
        plain(ti.tobuf(format=tarfile.GNU_FORMAT))
        if per:
            body.append(_deflated_zeros() * (per // CHUNK) if per >= CHUNK else
                        _deflated_zeros(per))
            crc = crc32_combine(crc, _crc_of_zeros(per), per)
            length += per
        plain(bytes((-per) % 512))
    plain(bytes(1024))
    body.append(c.flush(zlib.Z_FINISH))
    head = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    tail = (crc & 0xFFFFFFFF).to_bytes(4, "little") + (length & 0xFFFFFFFF).to_bytes(4, "little")
    return head + b"".join(body) + tail


def empty_files(count: int, per_dir: int = 1000) -> bytes:
    """A gzip'd tar of ``count`` empty files (the inode bomb)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for d in range((count + per_dir - 1) // per_dir):
            di = tarfile.TarInfo(f"d{d}")
            di.type, di.mode = tarfile.DIRTYPE, 0o755
            tf.addfile(di)
            for i in range(min(per_dir, count - d * per_dir)):
                fi = tarfile.TarInfo(f"d{d}/f{i}")
                fi.mode = 0o644
                tf.addfile(fi, io.BytesIO(b""))
    return _gz(buf.getvalue())


def sparse_layer(workdir: str, apparent: int, data: Iterable = ((0, b"head"),),
                 name: str = "sparse", fmt: str = "gnu") -> bytes:
    """A gzip'd tar holding one file of ``apparent`` bytes, all holes except ``data``
    [(offset, bytes)], written by GNU tar ``--sparse`` (only the data travels; format
    ``gnu``: old GNU sparse headers, ``pax``: PAX sparse 1.0). The same file tarred without
    ``--sparse`` is ``zeros_bomb(apparent)``: every hole travels as zeros."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, name)
    with open(path, "wb") as f:
        for off, chunk in data:
            f.seek(off)
            f.write(chunk)
        f.truncate(apparent)
    argv = ["tar", "--sparse", f"--format={fmt}", "--numeric-owner", "--owner=0",
            "--group=0", "--mtime=@0", "-C", workdir, "-cf", "-", name]
    tar = subprocess.run(argv, check=True, stdout=subprocess.PIPE).stdout
    os.unlink(path)
    return _gz(tar)


def pax_header_bomb(size: int) -> bytes:
    """A tar whose one member carries a PAX header of ``size`` bytes (tarfile would read it
    whole into memory)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("x")
        ti.pax_headers = {"comment": "x" * size}
        tf.addfile(ti, io.BytesIO(b""))
    return _gz(buf.getvalue())


def device(name: str, major: int = 1, minor: int = 3, block: bool = False):
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.BLKTYPE if block else tarfile.CHRTYPE
    ti.devmajor, ti.devminor = major, minor
    return ti, None


def write_oci_layout(image: "ik.Image", directory: str, tag: Optional[str] = None) -> str:
    """An OCI image layout (oci-layout, index.json -> the image index, blobs/sha256/...)."""
    blobs = os.path.join(directory, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)
    for d, data in image.blobs.items():
        with open(os.path.join(blobs, d.split(":", 1)[1]), "wb") as f:
            f.write(data)
    entry = {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": image.index,
             "size": len(image.blobs[image.index])}
    if tag:
        entry["annotations"] = {"org.opencontainers.image.ref.name": tag}
    with open(os.path.join(directory, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [entry]}, f)
    with open(os.path.join(directory, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    return directory
