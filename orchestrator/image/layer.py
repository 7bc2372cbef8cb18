"""Deterministic layer tars: the same entries give the same bytes on every machine.

Entries are sorted by path; mtime is one fixed epoch (``SOURCE_DATE_EPOCH`` or 0); owner
names are empty; modes are what the caller normalised; the gzip header is written here
(no name, mtime 0, OS 255) around a raw deflate stream, so nothing depends on the host's
gzip or clock. ``write_layer`` streams into the store and returns digest and diff_id.
"""
from __future__ import annotations

import hashlib
import os
import stat
import struct
import tarfile
import zlib
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Set, Tuple

from orchestrator.image.store import MT_LAYER_GZIP, Store
from runtime.records import Record, record

GZIP_LEVEL = 6


def source_date_epoch(environ=None) -> int:
    value = (environ if environ is not None else os.environ).get("SOURCE_DATE_EPOCH", "0")
    try:
        return max(0, int(value))
    except ValueError:
        return 0


@record
class Layer(Record):
    digest: str              # sha256 of the compressed blob
    diff_id: str             # sha256 of the uncompressed tar
    size: int
    media_type: str = MT_LAYER_GZIP


@dataclass
class Entry:
    path: str                             # relative, no leading "/" ("srv/www/index.html")
    type: str                             # dir | file | symlink | hardlink | char | block | fifo
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    source: Optional[str] = None          # file on disk for "file"
    data: Optional[bytes] = None          # or the bytes of a "file"
    linkname: str = ""                    # symlink target, or hardlink target path
    devmajor: int = 0
    devminor: int = 0


_TYPES = {"dir": tarfile.DIRTYPE, "file": tarfile.REGTYPE, "symlink": tarfile.SYMTYPE,
          "hardlink": tarfile.LNKTYPE, "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE,
          "fifo": tarfile.FIFOTYPE}


class _GzipSink:
    """File-like: hashes the tar (diff_id), deflates it and streams gzip into a BlobWriter."""

    def __init__(self, writer, level: int):
        self.writer = writer
        self.tar_hash = hashlib.sha256()
        self.crc = 0
        self.length = 0
        self.z = zlib.compressobj(level, zlib.DEFLATED, -15, 9)
        # magic, deflate, no flags, mtime 0, no extra flags, OS unknown
        writer.write(b"\x1f\x8b\x08\x00" + b"\x00\x00\x00\x00" + b"\x00\xff")

    def write(self, data) -> int:
        data = bytes(data)
        self.tar_hash.update(data)
        self.crc = zlib.crc32(data, self.crc)
        self.length += len(data)
        out = self.z.compress(data)
        if out:
            self.writer.write(out)
        return len(data)

    def finish(self) -> str:
        self.writer.write(self.z.flush())
        self.writer.write(struct.pack("<II", self.crc & 0xFFFFFFFF, self.length & 0xFFFFFFFF))
        return "sha256:" + self.tar_hash.hexdigest()


def write_layer(store: Store, entries: Iterable[Entry], epoch: int = 0, level: int = GZIP_LEVEL) -> Layer:
    """Write entries (any order; sorted here) as one gzip layer blob; return its digests."""
    ordered = sorted(entries, key=lambda e: e.path)
    seen: Set[str] = set()
    writer = store.writer()
    try:
        sink = _GzipSink(writer, level)
        with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for e in ordered:
                if e.path in seen:
                    continue
                seen.add(e.path)
                info = tarfile.TarInfo(e.path)
                info.type = _TYPES[e.type]
                info.mode = e.mode & 0o7777
                info.uid, info.gid = e.uid, e.gid
                info.uname = info.gname = ""
                info.mtime = epoch
                info.linkname = e.linkname
                info.devmajor, info.devminor = e.devmajor, e.devminor
                if e.type == "file":
                    if e.data is not None:
                        info.size = len(e.data)
                        tar.addfile(info, _BytesReader(e.data))
                    else:
                        with open(e.source, "rb") as fh:
                            info.size = os.fstat(fh.fileno()).st_size
                            tar.addfile(info, fh)
                else:
                    info.size = 0
                    tar.addfile(info)
        diff_id = sink.finish()
        digest, size = writer.commit()
    except BaseException:
        writer.abort()
        raise
    return Layer(digest=digest, diff_id=diff_id, size=size)


class _BytesReader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n is None or n < 0 else self.pos + n
        chunk = self.data[self.pos:end]
        self.pos += len(chunk)
        return chunk


# ------------------------------------------------------------------ entries from disk

def walk_tree(root: str, prefix: str = "", keep_owner: bool = True,
              exclude: Iterable[str] = (), overlay_upper: bool = False) -> Iterator[Entry]:
    """Entries for everything below ``root`` (not root itself), named ``prefix/rel``.

    Keeps permission bits (and owners when ``keep_owner``); hard links become tar hard links
    to the first path in sorted order. With ``overlay_upper``, overlayfs whiteouts (0/0 char
    devices) and opaque directories become OCI ``.wh.`` markers.
    """
    excluded = {e.strip("/") for e in exclude}
    links: Dict[Tuple[int, int], str] = {}
    paths: List[Tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        for n in dirnames + filenames:
            rel = f"{rel_dir}/{n}" if rel_dir else n
            paths.append((rel, os.path.join(dirpath, n)))
        # os.walk descends into dirnames; excluded ones are pruned
        dirnames[:] = [d for d in dirnames if (f"{rel_dir}/{d}" if rel_dir else d) not in excluded]
    for rel, full in sorted(paths):
        if rel in excluded or any(rel.startswith(x + "/") for x in excluded):
            continue
        name = f"{prefix}/{rel}".strip("/") if prefix else rel
        st = os.lstat(full)
        uid, gid = (st.st_uid, st.st_gid) if keep_owner else (0, 0)
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            yield Entry(name, "dir", mode, uid, gid)
            if overlay_upper and _is_opaque(full):
                yield Entry(f"{name}/.wh..wh..opq", "file", 0o644, 0, 0, data=b"")
        elif stat.S_ISREG(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in links:
                yield Entry(name, "hardlink", mode, uid, gid, linkname=links[key])
            else:
                if st.st_nlink > 1:
                    links[key] = name
                yield Entry(name, "file", mode, uid, gid, source=full)
        elif stat.S_ISLNK(st.st_mode):
            yield Entry(name, "symlink", 0o777, uid, gid, linkname=os.readlink(full))
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            if overlay_upper and stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                head, _, base = name.rpartition("/")
                yield Entry(f"{head}/.wh.{base}" if head else f".wh.{base}", "file", 0o644, 0, 0, data=b"")
                continue
            kind = "char" if stat.S_ISCHR(st.st_mode) else "block"
            yield Entry(name, kind, mode, uid, gid, devmajor=os.major(st.st_rdev), devminor=os.minor(st.st_rdev))
        elif stat.S_ISFIFO(st.st_mode):
            yield Entry(name, "fifo", mode, uid, gid)
        # sockets are skipped: they cannot live in a layer


def _is_opaque(path: str) -> bool:
    for attr in ("trusted.overlay.opaque", "user.overlay.opaque"):
        try:
            if os.getxattr(path, attr, follow_symlinks=False) == b"y":
                return True
        except OSError:
            pass
    return False


def ancestor_dirs(path: str, existing: Set[str]) -> List[Entry]:
    """Directory entries (0755, root) for the parents of ``path`` missing from ``existing``."""
    parts = path.strip("/").split("/")[:-1]
    out = []
    for i in range(1, len(parts) + 1):
        d = "/".join(parts[:i])
        if d not in existing:
            out.append(Entry(d, "dir", 0o755))
    return out
