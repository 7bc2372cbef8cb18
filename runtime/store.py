"""Content store: blobs by sha256, received resumably and verified before they are kept."""
from __future__ import annotations

import hashlib
import json
import os
import threading
from typing import BinaryIO, Dict, Iterable, List

from runtime import protocol
from runtime.errors import BadRequest, DigestMismatch, MissingBlob, NoRoom, UnsafeImage
from runtime.layout import Layout

CHUNK = 1 << 20
WRITEBACK = 8 << 20   # start writing received data to disk every 8 MiB, while more arrives


def _hex(digest: str) -> str:
    try:
        return protocol.split_digest(digest)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def _mark_path(layout: Layout, h: str) -> str:
    return os.path.join(os.path.dirname(layout.blobs), "verified", h)


def _fingerprint(st: os.stat_result) -> str:
    return f"{st.st_size} {st.st_mtime_ns} {st.st_ino}"


def mark_verified(layout: Layout, h: str) -> None:
    """Record that the blob's content was hashed right: its size, mtime and inode then. A blob
    that no longer matches its mark (or has none) is re-hashed before it counts as present."""
    d = os.path.dirname(_mark_path(layout, h))
    os.makedirs(d, mode=0o700, exist_ok=True)
    # a name of its own: serve's snapshot may mark the blob a session is marking (it re-hashes
    # one it finds unmarked), and with one shared name the later rename found nothing
    tmp = f"{_mark_path(layout, h)}.tmp.{os.getpid()}.{threading.get_ident()}"
    try:
        with open(tmp, "w") as f:
            f.write(_fingerprint(os.stat(layout.blob(h))))
        os.replace(tmp, _mark_path(layout, h))
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def forget_verified(layout: Layout, digest: str) -> None:
    try:
        os.unlink(_mark_path(layout, _hex(digest)))
    except FileNotFoundError:
        pass


def held_digests(layout: Layout) -> List[str]:
    """Every blob this host holds: the files under blobs/ and the blobs that stored layers
    stand for (their files are gone once unpacked)."""
    from runtime import layers
    names = os.listdir(layout.blobs) if os.path.isdir(layout.blobs) else []
    return sorted({"sha256:" + n for n in names if len(n) == 64} | set(layers.by_blob(layout)))


def drop_blob(layout: Layout, digest: str) -> None:
    """Remove a blob and its mark (a layer blob once the layer store holds the layer)."""
    try:
        os.unlink(layout.blob(_hex(digest)))
    except FileNotFoundError:
        pass
    forget_verified(layout, digest)


def is_marked(layout: Layout, digest: str) -> bool:
    h = _hex(digest)
    try:
        with open(_mark_path(layout, h)) as f:
            return f.read() == _fingerprint(os.stat(layout.blob(h)))
    except OSError:
        return False


def _hash_file(path: str) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(CHUNK), b""):
            hasher.update(b)
    return hasher.hexdigest()


def check_blob(layout: Layout, digest: str) -> bool:
    """Whether the blob is here and whole: its mark matches (cheap), or, in doubt, its content
    hashes to its digest (then it is marked again). A damaged blob is dropped, so ``have``
    reports it missing and the orchestrator sends it again."""
    h = _hex(digest)
    path = layout.blob(h)
    if not os.path.exists(path):
        return False
    if is_marked(layout, digest):
        return True
    if _hash_file(path) == h:
        mark_verified(layout, h)
        return True
    os.unlink(path)
    forget_verified(layout, digest)
    return False


def have(layout: Layout, digests: Iterable[str], with_layers: bool = False) -> Dict[str, object]:
    """Which blobs are here (a layer unpacked in the layer store counts as its blob), and how
    much of each partly received one; ``with_layers``: also every stored layer (``layers``)."""
    from runtime import layers
    present: List[str] = []
    partial: Dict[str, int] = {}
    stored = layers.by_blob(layout)
    for d in digests:
        h = _hex(d)
        if d in stored or check_blob(layout, d):
            present.append(d)
            continue
        try:
            partial[d] = os.stat(os.path.join(layout.incoming, h + ".part")).st_size
        except FileNotFoundError:
            pass
    out: Dict[str, object] = {"present": present, "partial": partial}
    if with_layers:
        out["layers"] = layers.held(layout)
    return out


F_SETPIPE_SZ = 1031   # fcntl.F_SETPIPE_SZ (named there only from Python 3.10)


def _widen_pipe(stream) -> None:
    """A 1 MiB stdin pipe lets sshd write ahead while this process hashes and writes."""
    try:
        import fcntl
        fcntl.fcntl(stream.fileno(), F_SETPIPE_SZ, 1 << 20)
    except (AttributeError, OSError, ValueError):
        pass   # not a pipe (a test's file), or a kernel limit: fine either way


def _start_writeback(fd: int, start: int, length: int) -> None:
    """Ask the kernel to begin writing this range now (asynchronously), so the fsync at the
    end of a large blob has little left to do and disk and network overlap."""
    try:
        os.posix_fadvise(fd, start, length, os.POSIX_FADV_DONTNEED)
    except (AttributeError, OSError):
        pass


def _hash_prefix(path: str, length: int, hasher) -> None:
    """Feed the first ``length`` bytes already received into ``hasher`` (a resumed upload)."""
    with open(path, "rb") as f:
        while length:
            b = f.read(min(CHUNK, length))
            if not b:
                raise BadRequest(f"{os.path.basename(path)}: shorter than the offset {length} bytes ago")
            hasher.update(b)
            length -= len(b)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def receive(layout: Layout, stream: BinaryIO) -> Dict[str, object]:
    """Read frames until EOF. Complete blobs are verified then renamed into the store; a frame
    cut short stays as a partial file that a later receive continues from its offset."""
    stored: List[str] = []
    partial: Dict[str, int] = {}
    refused: Dict[str, str] = {}
    _widen_pipe(stream)
    while True:
        line = stream.readline()
        if not line:
            break
        if not line.strip():
            continue
        from runtime import wire
        if wire.is_layer_frame(line):        # a layer as a recipe, into the layer store
            try:
                stored.append(wire.receive_layer(layout, line, stream))
            except wire.Cut:                    # a dropped link: the sender sends it again
                partial[json.loads(line)["blob"]] = 0
                break
            except (DigestMismatch, MissingBlob, UnsafeImage, NoRoom) as exc:
                refused[json.loads(line)["blob"]] = exc.message
            continue
        try:
            digest, size, offset = protocol.parse_frame_header(line)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        h = protocol.split_digest(digest)
        final = layout.blob(h)
        part = os.path.join(layout.incoming, h + ".part")
        have_bytes = os.path.getsize(part) if os.path.exists(part) else 0
        if os.path.exists(final):
            have_bytes = -1  # already stored: swallow the frame
        elif offset > have_bytes:
            raise BadRequest(f"{digest}: offset {offset} beyond the {have_bytes} bytes received")
        left = size - offset
        fd = None
        hasher = hashlib.sha256()      # hashed as it arrives: no second pass over the blob
        if have_bytes >= 0:
            if offset:
                _hash_prefix(part, offset, hasher)
            fd = os.open(part, os.O_WRONLY | os.O_CREAT, 0o644)
            os.ftruncate(fd, offset)
            os.lseek(fd, offset, os.SEEK_SET)
        flushed = written = offset
        try:
            while left:
                chunk = stream.read(min(left, CHUNK))
                if not chunk:
                    break
                left -= len(chunk)
                if fd is not None:
                    hasher.update(chunk)
                    os.write(fd, chunk)
                    written += len(chunk)
                    if written - flushed >= WRITEBACK:
                        _start_writeback(fd, flushed, written - flushed)
                        flushed = written
            if fd is not None:
                os.fsync(fd)
        finally:
            if fd is not None:
                os.close(fd)
        if have_bytes < 0:
            stored.append(digest)
            continue
        if left:
            partial[digest] = size - left
            break  # the stream ended inside this frame
        got = hasher.hexdigest()
        if got != h:
            os.unlink(part)
            refused[digest] = f"content hashes to sha256:{got}"
            continue
        os.replace(part, final)
        _fsync_dir(layout.blobs)
        mark_verified(layout, h)
        stored.append(digest)
    if refused:
        raise DigestMismatch("refused blobs whose content does not match their digest: "
                             + ", ".join(f"{d} ({why})" for d, why in sorted(refused.items())),
                             stored=stored, partial=partial, refused=sorted(refused))
    return {"stored": stored, "partial": partial}


def open_blob(layout: Layout, digest: str) -> BinaryIO:
    try:
        return open(layout.blob(_hex(digest)), "rb")
    except FileNotFoundError:
        raise MissingBlob(f"blob {digest} is not on this host") from None


def read_verified(layout: Layout, digest: str, limit: int = 4 << 20) -> bytes:
    """Read a small blob (manifest, config) whole and check its digest again."""
    with open_blob(layout, digest) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise BadRequest(f"blob {digest} is larger than {limit} bytes")
    if protocol.sha256_digest(data) != digest:
        forget_verified(layout, digest)       # the next ``have`` re-hashes it, drops it, asks for it
        raise DigestMismatch(f"blob {digest} on disk is corrupted; refusing to use it")
    return data


class HashingReader:
    """File wrapper that hashes what is read, so a layer is verified while it is unpacked."""

    def __init__(self, f: BinaryIO):
        self._f = f
        self._h = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        b = self._f.read(n)
        self._h.update(b)
        self.size += len(b)
        return b

    def drain(self) -> str:
        while self.read(CHUNK):
            pass
        return "sha256:" + self._h.hexdigest()
