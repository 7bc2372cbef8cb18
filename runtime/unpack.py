"""Unpack an OCI image manifest into a root filesystem, once, refusing anything unsafe.

Refused with ``UnsafeImage``: absolute entry names or names with ``..``, symlinks whose
relative target climbs above the root, hardlinks whose target is absolute or escapes,
device nodes. Absolute symlink targets are kept (they are resolved inside the container's
root at run time) and the unpacker itself never follows a link out of the root: every parent
directory is resolved component by component with links clamped to the root.
Whiteouts (``.wh.NAME``) and opaque directories (``.wh..wh..opq``) are honoured.
Each layer is hashed while it is read; a mismatch throws the whole unpack away.

Budgets (``Budget``, from the agent's config) are enforced while the layers stream, before
each write: bytes written, entries created, a share of the filesystem's space and inodes
kept free. A tar header larger than ``MAX_HEADER`` is refused before tarfile holds it in
memory. Sparse members are written by seeking over their holes, which cost no budget.
Every error names the image and the layer; a failed unpack leaves nothing behind.
The build machine unpacks base layers with this same module (``apply_layers``).
"""
from __future__ import annotations

import json
import os
import shutil
import stat
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, BinaryIO, Callable, ContextManager, Iterator, List, Mapping, \
    Optional, Sequence, Set, Tuple

if TYPE_CHECKING:
    import tarfile

from runtime import protocol, store
from runtime.errors import AgentFailure, BadRequest, DigestMismatch, NoRoom, UnsafeImage
from runtime.layout import Layout, read_json, write_json

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
LAYER_TYPES = (
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
)
INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
MAX_HEADER = 1 << 20      # bytes of tar headers (PAX, GNU long names, sparse maps) per entry
CHUNK = 1 << 20


@dataclass(frozen=True)
class Budget:
    """What one image may take when it is unpacked (all its layers together). The defaults
    suit a Raspberry Pi's SD card; ``/etc/orch/agent.json`` {"unpack": {...}} changes them."""

    max_bytes: int = 16 << 30              # file data written (holes of sparse files are free)
    max_files: int = 500_000               # entries created: files, dirs, links, fifos
    reserve_percent: float = 5.0           # of the filesystem's space that stays free
    reserve_inodes_percent: float = 5.0    # of its inodes that stay free

    @classmethod
    def from_config(cls, section: object, where: str) -> "Budget":
        if not isinstance(section, dict):
            raise BadRequest(f"{where}: expected an object")
        known = {f.name for f in fields(cls)}
        for key, value in section.items():
            if key not in known:
                raise BadRequest(f"{where}/{key}: unknown setting (known: "
                                 f"{', '.join(sorted(known))})")
            ok = isinstance(value, int) if key.startswith("max_") else \
                isinstance(value, (int, float)) and 0 <= value < 100
            if isinstance(value, bool) or not ok or value < 0:
                raise BadRequest(f"{where}/{key}: expected "
                                 + ("a whole number >= 0" if key.startswith("max_")
                                    else "a percentage in [0, 100)") + f", got {value!r}")
        return cls(**section)

    def reserve_bytes(self, path: str) -> int:
        st = os.statvfs(path)
        return int(st.f_blocks * st.f_frsize * self.reserve_percent / 100)


def load_budget(path: str) -> Budget:
    """The unpack budget from the agent's config file (defaults when it is absent)."""
    try:
        cfg = read_json(path, {})
    except ValueError as exc:
        raise BadRequest(f"{path}: not JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise BadRequest(f"{path}: expected an object")
    return Budget.from_config(cfg.get("unpack", {}), f"{path}: unpack")


class Meter:
    """Charges one image's unpack against its budget: asked before each entry is created and
    before each file's data is written, so nothing over the budget ever reaches the disk."""

    def __init__(self, root: str, budget: Budget):
        self.root, self.budget = root, budget
        self.bytes = 0
        self.files = 0

    def entry(self, name: str) -> None:
        self.files += 1
        if self.files > self.budget.max_files:
            raise UnsafeImage(f"{name!r}: more than {self.budget.max_files} files (budget)")
        st = os.statvfs(self.root)
        keep = st.f_files * self.budget.reserve_inodes_percent / 100
        if st.f_files and st.f_favail - 1 < keep:
            raise NoRoom(f"{name!r}: unpacking would leave fewer than "
                         f"{self.budget.reserve_inodes_percent:g}% of the inodes free")

    def data(self, name: str, n: int) -> None:
        if self.bytes + n > self.budget.max_bytes:
            raise UnsafeImage(f"{name!r}: the image unpacks to more than "
                              f"{self.budget.max_bytes} bytes (budget)")
        st = os.statvfs(self.root)
        keep = st.f_blocks * st.f_frsize * self.budget.reserve_percent / 100
        if st.f_bavail * st.f_frsize - n < keep:
            raise NoRoom(f"{name!r}: writing {n} bytes would leave less than "
                         f"{self.budget.reserve_percent:g}% of the disk free "
                         f"({st.f_bavail * st.f_frsize} bytes free)")
        self.bytes += n


class _Guard:
    """The decompressed tar stream as tarfile reads it. While tarfile reads an entry's
    headers (``headers`` is a count), more than ``MAX_HEADER`` bytes is refused: a PAX or
    GNU long-name header of gigabytes would otherwise be read whole into memory. Every byte
    is hashed: at the end of the stream ``diff_id`` is the layer's uncompressed digest."""

    def __init__(self, f: BinaryIO):
        import hashlib
        self.f = f
        self.headers: Optional[int] = None
        self.hash = hashlib.sha256()

    def diff_id(self) -> str:
        """Read to the end (tarfile stops at the end-of-archive blocks) and name the hash."""
        self.headers = None
        while self.read(CHUNK):
            pass
        return "sha256:" + self.hash.hexdigest()

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(n)
        self.hash.update(b)
        if self.headers is not None:
            self.headers += len(b)
            if self.headers > MAX_HEADER:
                raise UnsafeImage(f"a tar header is larger than {MAX_HEADER} bytes")
        return b


class _Prefixed:
    """A stream with its first bytes already read (to sniff the compression)."""

    def __init__(self, head: bytes, f: BinaryIO):
        self.head, self.f = head, f

    def read(self, n: int = -1) -> bytes:
        if self.head:
            if n is None or n < 0:
                b, self.head = self.head + self.f.read(), b""
                return b
            b, self.head = self.head[:n], self.head[n:]
            return b
        return self.f.read(n)


def image_dir(layout: Layout, manifest_digest: str) -> str:
    return os.path.join(layout.images, protocol.split_digest(manifest_digest))


def is_unpacked(layout: Layout, manifest_digest: str) -> bool:
    """Whether the image's root can be mounted now: flattened, or every layer in the store."""
    d = image_dir(layout, manifest_digest)
    if os.path.isdir(os.path.join(d, "rootfs")):
        return True
    from runtime import layers
    ids = read_json(os.path.join(d, "layers.json"))
    return isinstance(ids, list) and layers.lowers_of(layout, ids) is not None


def lowerdirs(layout: Layout, manifest_digest: str) -> List[str]:
    """The overlay lower directories of an unpacked image, top first."""
    d = image_dir(layout, manifest_digest)
    if os.path.isdir(os.path.join(d, "rootfs")):
        return [os.path.join(d, "rootfs")]
    from runtime import layers
    ids = read_json(os.path.join(d, "layers.json"))
    lowers = layers.lowers_of(layout, ids) if isinstance(ids, list) else None
    if lowers is None:
        raise BadRequest(f"image {manifest_digest} is not unpacked on this host")
    return lowers


def layer_ids(layout: Layout, manifest_digest: str) -> List[str]:
    """The diff_ids an unpacked image stacks (empty for a flattened one)."""
    ids = read_json(os.path.join(image_dir(layout, manifest_digest), "layers.json"))
    return list(ids) if isinstance(ids, list) else []


def select_manifest(index: dict, platform: str) -> str:
    """Pick the manifest for ``linux/arm64`` / ``linux/arm/v7`` / ... from an image index."""
    os_, _, rest = platform.partition("/")
    arch, _, variant = rest.partition("/")
    for m in index.get("manifests", []):
        p = m.get("platform") or {}
        if p.get("os") == os_ and p.get("architecture") == arch and \
                (p.get("variant") or "") == (variant or ""):
            return m["digest"]
    for m in index.get("manifests", []):  # arm64 images often omit the v8 variant
        p = m.get("platform") or {}
        if p.get("os") == os_ and p.get("architecture") == arch and not variant:
            return m["digest"]
    raise BadRequest(f"image index has no manifest for {platform}")


def _names(member: "tarfile.TarInfo") -> List[str]:
    name = member.name
    if name.startswith("/"):
        raise UnsafeImage(f"absolute path in layer: {name!r}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeImage(f"path escapes the root: {name!r}")
    return parts


def _resolve(root: str, parts: List[str]) -> str:
    """Host path of ``parts`` inside ``root``, following symlinks but never leaving root."""
    return os.path.join(root, *Stack(root, []).resolve(parts))


def _escapes(base: List[str], target: str) -> bool:
    depth = len(base)
    for p in target.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            depth -= 1
            if depth < 0:
                return True
        else:
            depth += 1
    return False


def _remove(path: str) -> None:
    if os.path.islink(path) or not os.path.isdir(path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    else:
        shutil.rmtree(path)


def check_member(member: "tarfile.TarInfo") -> List[str]:
    """The pure safety rules for one tar entry; returns its path components."""
    parts = _names(member)
    if member.ischr() or member.isblk():
        raise UnsafeImage(f"device node in layer: {member.name!r}")
    if member.issym():
        if not member.linkname.startswith("/") and _escapes(parts[:-1], member.linkname):
            raise UnsafeImage(f"symlink escapes the root: {member.name!r} -> {member.linkname!r}")
    if member.islnk():
        link = member.linkname
        if link.startswith("/") or _escapes([], link) or ".." in link.split("/"):
            raise UnsafeImage(f"hardlink escapes the root: {member.name!r} -> {link!r}")
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()
            or member.isfifo()):
        raise UnsafeImage(f"unsupported entry type {member.type!r}: {member.name!r}")
    return parts


def _apply_meta(path: str, m: "tarfile.TarInfo") -> None:
    """Owner, mode and mtime of an entry just created at ``path`` (never through a link)."""
    os.lchown(path, m.uid, m.gid)
    if not m.issym() and not os.path.islink(path):
        os.chmod(path, m.mode & 0o7777)
    try:
        os.utime(path, (m.mtime, m.mtime), follow_symlinks=False)
    except (NotImplementedError, OSError):
        pass


def _write_file(tf: "tarfile.TarFile", m: "tarfile.TarInfo", path: str, meter: Meter) -> None:
    """A regular file's data; a sparse member's holes are seeked over, never written."""
    segments = m.sparse if m.sparse is not None else [(0, m.size)]
    meter.data(m.name, sum(n for _, n in segments))
    src = tf.extractfile(m).raw       # the member itself, unbuffered: seek skips holes
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        for offset, n in segments:
            src.seek(offset)
            os.lseek(fd, offset, os.SEEK_SET)
            while n > 0:
                b = src.read(min(n, CHUNK))
                if not b:
                    raise UnsafeImage(f"{m.name!r}: unexpected end of data")
                os.write(fd, b)
                n -= len(b)
        os.ftruncate(fd, m.size)
    finally:
        os.close(fd)


def entries(fileobj, out: Optional[dict] = None
            ) -> Iterator[Tuple["tarfile.TarFile", "tarfile.TarInfo"]]:
    """Each entry of a layer stream (tar or tar+gzip), with its TarFile for ``extractfile``;
    headers capped at ``MAX_HEADER``, no header kept once passed. For reading a layer's
    names or one small file without unpacking it (read data with a limit of your own).
    Iterated to the end, ``out["diff_id"]`` is the digest of the uncompressed stream."""
    import gzip
    import tarfile
    import zlib
    try:
        head = fileobj.read(2)
        raw = _Prefixed(head, fileobj)
        stream = _Guard(gzip.GzipFile(fileobj=raw, mode="rb") if head == b"\x1f\x8b" else raw)
        stream.headers = 0
        tf = tarfile.open(fileobj=stream, mode="r|")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise UnsafeImage(f"layer is not a readable tar: {exc}") from None
    with tf:
        while True:
            try:
                # data of the previous entry the caller did not read is not a header: pass it
                # uncounted (the first entry was read by open(), nothing to pass yet)
                if tf.firstmember is None and tf.offset != tf.fileobj.tell():
                    tf.fileobj.seek(tf.offset - 1)
                    if not tf.fileobj.read(1):
                        raise tarfile.ReadError("unexpected end of data")
                stream.headers = 0
                m = tf.next()
                stream.headers = None
            except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
                raise UnsafeImage(f"layer is truncated or corrupt: {exc}") from None
            if m is None:
                if out is not None:
                    try:
                        out["diff_id"] = stream.diff_id()
                    except (EOFError, OSError, zlib.error) as exc:
                        raise UnsafeImage(f"layer is truncated or corrupt: {exc}") from None
                return
            tf.members = []      # stream mode keeps every header otherwise
            yield tf, m


def is_whiteout(path: str) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


class Stack:
    """How one layer is unpacked into a directory of its own, in overlay's form (for the
    layer store): ``lowers`` are the unpacked layers beneath it, top first, read only to
    resolve a parent directory through a symlink (a merged-/usr base's ``lib -> usr/lib``),
    to give a directory this layer only implies the owner and mode it has below, and to copy
    a file that a hardlink names from a lower layer. A whiteout becomes a 0/0 character
    device, an opaque marker the ``trusted.overlay.opaque`` xattr; nothing is ever written
    outside ``root``."""

    def __init__(self, root: str, lowers: Sequence[str]):
        self.root, self.lowers = root, list(lowers)

    def _find(self, rel: List[str]) -> Optional[str]:
        """The top-most existing path ``rel`` in root or a lower (a whiteout hides it)."""
        for base in [self.root] + self.lowers:
            p = os.path.join(base, *rel)
            if os.path.lexists(p):
                return None if is_whiteout(p) else p
        return None

    def resolve(self, parts: List[str]) -> List[str]:
        """``parts`` with symlinks followed through the merged view, clamped to the root."""
        cur: List[str] = []
        todo = list(parts)
        hops = 0
        while todo:
            name = todo.pop(0)
            if name in ("", "."):
                continue
            if name == "..":
                if cur:
                    cur.pop()
                continue
            found = self._find(cur + [name])
            if found is not None and os.path.islink(found):
                hops += 1
                if hops > 40:
                    raise UnsafeImage(f"too many levels of symlinks under {'/'.join(parts)!r}")
                target = os.readlink(found)
                if target.startswith("/"):
                    cur = []
                todo = target.split("/") + todo
                continue
            cur.append(name)
        return cur

    def make_dirs(self, rel: List[str], meter: Meter) -> str:
        """Create the directories of ``rel`` this layer lacks, each with the owner, mode and
        mtime it has in the lower layers (a layer that adds /tmp/x keeps /tmp 1777)."""
        for i in range(1, len(rel) + 1):
            p = os.path.join(self.root, *rel[:i])
            if os.path.isdir(p) and not os.path.islink(p):
                continue
            hid = is_whiteout(p)
            if os.path.lexists(p):
                _remove(p)
            meter.entry("/".join(rel[:i]))
            os.mkdir(p, 0o755)
            if hid:                 # removed above it in this layer: nothing below shows
                self.opaque(p)
            below = next((os.path.join(b, *rel[:i]) for b in self.lowers
                          if os.path.isdir(os.path.join(b, *rel[:i]))), None)
            if below is not None:
                st = os.lstat(below)
                os.lchown(p, st.st_uid, st.st_gid)
                os.chmod(p, stat.S_IMODE(st.st_mode))
                os.utime(p, ns=(st.st_mtime_ns, st.st_mtime_ns))
        return os.path.join(self.root, *rel)

    def whiteout(self, path: str) -> None:
        _remove(path)
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(0, 0))

    @staticmethod
    def opaque(path: str) -> None:
        os.setxattr(path, "trusted.overlay.opaque", b"y")

    def link(self, m: "tarfile.TarInfo", path: str, meter: Meter) -> None:
        lparts = [p for p in m.linkname.split("/") if p not in ("", ".")]
        rel = self.resolve(lparts[:-1]) + lparts[-1:]
        src = self._find(rel)
        if src is None:
            raise UnsafeImage(f"hardlink target missing: {m.name!r} -> {m.linkname!r}")
        if src.startswith(self.root + os.sep):
            os.link(src, path, follow_symlinks=False)
            return
        st = os.lstat(src)                 # in a lower layer: this layer gets its own copy
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeImage(f"hardlink to a non-file in a lower layer: {m.name!r}")
        meter.data(m.name, st.st_size)
        shutil.copyfile(src, path, follow_symlinks=False)
        os.lchown(path, st.st_uid, st.st_gid)
        os.chmod(path, stat.S_IMODE(st.st_mode))


def apply_layer(root: str, fileobj, created: Optional[Set[str]] = None,
                meter: Optional[Meter] = None, stack: Optional[Stack] = None) -> str:
    """Extract one layer (tar or tar+gzip stream) on top of ``root``, charging ``meter``
    (a fresh default budget when none is given). With ``stack``, ``root`` is the layer's
    own empty directory, written in overlay's form (see ``Stack``). Returns the layer's
    diff_id (the digest of its uncompressed tar stream) for the caller to check against the
    image config."""
    import gzip
    import tarfile
    import zlib
    created = set() if created is None else created
    meter = meter or Meter(root, Budget())
    out: dict = {}
    try:
        for tf, m in entries(fileobj, out):
            parts = check_member(m)
            if not parts:
                continue
            base = parts[-1]
            if stack is not None:
                parent = stack.make_dirs(stack.resolve(parts[:-1]), meter)
            else:
                parent = _resolve(root, parts[:-1])
                if not os.path.isdir(parent):
                    meter.entry("/".join(parts[:-1]))
                    os.makedirs(parent, mode=0o755)
            rel = "/".join(parts)
            if base.startswith(WHITEOUT) and m.size:
                raise UnsafeImage(f"whiteout with content: {m.name!r}")
            if base == OPAQUE:
                if stack is not None:
                    stack.opaque(parent)
                    continue
                for child in os.listdir(parent):
                    cp = os.path.join(parent, child)
                    crel = "/".join(parts[:-1] + [child])
                    if crel not in created:
                        _remove(cp)
                continue
            if base.startswith(WHITEOUT):
                if stack is not None:
                    meter.entry(m.name)
                    stack.whiteout(os.path.join(parent, base[len(WHITEOUT):]))
                    continue
                _remove(os.path.join(parent, base[len(WHITEOUT):]))
                continue
            path = os.path.join(parent, base)
            created.add(rel)
            if m.isdir():
                hid = stack is not None and is_whiteout(path)
                if os.path.lexists(path) and not (os.path.isdir(path)
                                                  and not os.path.islink(path)):
                    _remove(path)
                if not os.path.lexists(path):
                    meter.entry(m.name)
                    os.mkdir(path, 0o755)
                    if hid:
                        stack.opaque(path)
                # metadata now, never deferred: a later entry may turn a parent of this
                # path into a link, and a deferred chmod would then land outside the root
                _apply_meta(path, m)
                continue
            if os.path.lexists(path):
                _remove(path)
            meter.entry(m.name)
            if m.isfile():
                _write_file(tf, m, path, meter)
            elif m.issym():
                os.symlink(m.linkname, path)
            elif m.islnk():
                if stack is not None:
                    stack.link(m, path, meter)
                    continue
                lparts = [p for p in m.linkname.split("/") if p not in ("", ".")]
                src = os.path.join(_resolve(root, lparts[:-1]), lparts[-1])
                if not os.path.lexists(src):
                    raise UnsafeImage(f"hardlink target missing: {m.name!r} -> "
                                      f"{m.linkname!r}")
                os.link(src, path, follow_symlinks=False)
                continue
            elif m.isfifo():
                os.mkfifo(path, 0o600)
            _apply_meta(path, m)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise UnsafeImage(f"layer is truncated or corrupt: {exc}") from None
    except OSError as exc:
        raise UnsafeImage(f"layer could not be unpacked: {exc}") from None
    return out["diff_id"]


def check_diff_ids(image: str, layers: Sequence[Mapping], diff_ids: Sequence[str]) -> None:
    """The config must name one diff_id per layer (each checked as the layer is unpacked)."""
    if len(diff_ids) != len(layers) or not all(isinstance(d, str) for d in diff_ids):
        raise DigestMismatch(f"image {image}: its config lists {len(diff_ids)} diff_ids for "
                             f"{len(layers)} layers; refusing it")


def apply_layers(root: str, layers: Sequence[Mapping], open_blob: Callable[[str], ContextManager],
                 budget: Budget, image: str, diff_ids: Optional[Sequence[str]] = None) -> None:
    """Apply ``layers`` ([{"digest": ...}], bottom first) onto ``root`` within one budget.
    Each layer is hashed while it is read and must match its digest, and its uncompressed
    stream must match its diff_id (``diff_ids``, from the image config). Errors name the
    image and the layer; the caller removes ``root`` on failure."""
    if diff_ids is not None:
        check_diff_ids(image, layers, diff_ids)
    meter = Meter(root, budget)
    created: Set[str] = set()
    for i, layer in enumerate(layers, 1):
        digest = layer["digest"]
        where = f"image {image} layer {i}/{len(layers)} {digest}"
        try:
            with open_blob(digest) as raw:
                reader = store.HashingReader(raw)
                created.clear()
                diff_id = apply_layer(root, reader, created, meter)
                got = reader.drain()
        except AgentFailure as exc:
            raise type(exc)(f"{where}: {exc.message}", **exc.extra) from None
        if got != digest:
            raise DigestMismatch(f"{where}: on disk it hashes to {got}; refusing it")
        if diff_ids is not None and diff_id != diff_ids[i - 1]:
            raise DigestMismatch(f"{where}: its uncompressed content hashes to {diff_id}, "
                                 f"not to the diff_id {diff_ids[i - 1]} its image config "
                                 "names; refusing it")


def diff_ids_of(config: Mapping) -> list:
    rootfs = config.get("rootfs") if isinstance(config, Mapping) else None
    ids = rootfs.get("diff_ids") if isinstance(rootfs, Mapping) else None
    return list(ids) if isinstance(ids, list) else []


def read_manifest(layout: Layout, manifest_digest: str) -> dict:
    try:
        m = json.loads(store.read_verified(layout, manifest_digest))
    except ValueError as exc:
        raise BadRequest(f"manifest {manifest_digest} is not JSON: {exc}") from None
    if m.get("mediaType") in INDEX_TYPES or "manifests" in m:
        raise BadRequest(f"{manifest_digest} is an image index, not a manifest")
    return m


def unpack_image(layout: Layout, manifest_digest: str, budget: Optional[Budget] = None) -> str:
    """Make the image mountable: each layer this host lacks unpacked once into the layer
    store (``runtime.layers``), and images/<hex>/ holding config.json, manifest.json and
    layers.json (its diff_ids, bottom first). An image too deep for one overlay mount is
    flattened from the layer store into images/<hex>/rootfs instead (so a layer never needs
    its blob once it is in the store). Returns the image dir (0700: nothing in an
    image, setuid files included, is reachable by other users of the host)."""
    from runtime import layers as layer_store
    dest = image_dir(layout, manifest_digest)
    if is_unpacked(layout, manifest_digest):
        return dest
    budget = budget or load_budget(layout.config)
    manifest = read_manifest(layout, manifest_digest)
    config = json.loads(store.read_verified(layout, manifest["config"]["digest"]))
    layers = manifest.get("layers", [])
    for layer in layers:
        mt = layer.get("mediaType", LAYER_TYPES[1])
        if mt not in LAYER_TYPES:
            raise BadRequest(f"image {manifest_digest}: unsupported layer media type {mt!r}")
    diff_ids = diff_ids_of(config)
    check_diff_ids(manifest_digest, layers, diff_ids)
    flat = not layer_store.fits_overlay(layout, diff_ids)
    layer_store.unpack_layers(layout, manifest_digest, layers, diff_ids, budget)
    shutil.rmtree(dest, ignore_errors=True)        # a record whose layers were collected
    tmp = f"{dest}.tmp-{os.getpid()}"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp, mode=0o700)
    try:
        if flat:
            rootfs = os.path.join(tmp, "rootfs")
            os.mkdir(rootfs, 0o755)
            layer_store.flatten(layout, diff_ids, rootfs, Meter(layout.root, budget))
        else:
            write_json(os.path.join(tmp, "layers.json"), diff_ids)
        write_json(os.path.join(tmp, "config.json"), config)
        write_json(os.path.join(tmp, "manifest.json"), manifest)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def image_config(layout: Layout, manifest_digest: str) -> dict:
    with open(os.path.join(image_dir(layout, manifest_digest), "config.json")) as f:
        return json.load(f)


def mode_of(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)
