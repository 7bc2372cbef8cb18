"""Unpack an OCI image manifest into a root filesystem, once, refusing anything unsafe.

Refused with ``UnsafeImage``: absolute entry names or names with ``..``, symlinks whose
relative target climbs above the root, hardlinks whose target is absolute or escapes,
device nodes. Absolute symlink targets are kept (they are resolved inside the container's
root at run time) and the unpacker itself never follows a link out of the root: every parent
directory is resolved component by component with links clamped to the root.
Whiteouts (``.wh.NAME``) and opaque directories (``.wh..wh..opq``) are honoured.
Each layer is hashed while it is read; a mismatch throws the whole unpack away.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
from typing import TYPE_CHECKING, List, Optional, Set

if TYPE_CHECKING:
    import tarfile

from runtime import protocol, store
from runtime.errors import BadRequest, DigestMismatch, UnsafeImage
from runtime.layout import Layout, write_json

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


def image_dir(layout: Layout, manifest_digest: str) -> str:
    return os.path.join(layout.images, protocol.split_digest(manifest_digest))


def is_unpacked(layout: Layout, manifest_digest: str) -> bool:
    return os.path.isdir(os.path.join(image_dir(layout, manifest_digest), "rootfs"))


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
        path = os.path.join(root, *cur, name)
        if os.path.islink(path):
            hops += 1
            if hops > 40:
                raise UnsafeImage(f"too many levels of symlinks under {'/'.join(parts)!r}")
            target = os.readlink(path)
            if target.startswith("/"):
                cur = []
            todo = target.split("/") + todo
            continue
        cur.append(name)
    return os.path.join(root, *cur)


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


def apply_layer(root: str, fileobj, created: Optional[Set[str]] = None) -> None:
    """Extract one layer (tar or tar+gzip stream) on top of ``root``."""
    import gzip
    import tarfile
    import zlib
    created = set() if created is None else created
    try:
        tf = tarfile.open(fileobj=fileobj, mode="r|*")
    except tarfile.TarError as exc:
        raise UnsafeImage(f"layer is not a readable tar: {exc}") from None
    with tf:
        try:
            for m in tf:
                parts = check_member(m)
                if not parts:
                    continue
                base = parts[-1]
                parent = _resolve(root, parts[:-1])
                if not os.path.isdir(parent):
                    os.makedirs(parent, mode=0o755)
                rel = "/".join(parts)
                if base == OPAQUE:
                    for child in os.listdir(parent):
                        cp = os.path.join(parent, child)
                        crel = "/".join(parts[:-1] + [child])
                        if crel not in created:
                            _remove(cp)
                    continue
                if base.startswith(WHITEOUT):
                    _remove(os.path.join(parent, base[len(WHITEOUT):]))
                    continue
                path = os.path.join(parent, base)
                created.add(rel)
                if m.isdir():
                    if os.path.lexists(path) and not (os.path.isdir(path)
                                                      and not os.path.islink(path)):
                        _remove(path)
                    if not os.path.lexists(path):
                        os.mkdir(path, 0o755)
                    # metadata now, never deferred: a later entry may turn a parent of this
                    # path into a link, and a deferred chmod would then land outside the root
                    _apply_meta(path, m)
                    continue
                if os.path.lexists(path):
                    _remove(path)
                if m.isfile():
                    src = tf.extractfile(m)
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                                 0o600)
                    with os.fdopen(fd, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                elif m.issym():
                    os.symlink(m.linkname, path)
                elif m.islnk():
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


def read_manifest(layout: Layout, manifest_digest: str) -> dict:
    try:
        m = json.loads(store.read_verified(layout, manifest_digest))
    except ValueError as exc:
        raise BadRequest(f"manifest {manifest_digest} is not JSON: {exc}") from None
    if m.get("mediaType") in INDEX_TYPES or "manifests" in m:
        raise BadRequest(f"{manifest_digest} is an image index, not a manifest")
    return m


def unpack_image(layout: Layout, manifest_digest: str) -> str:
    """Unpack once into images/<hex>/rootfs (+ config.json); returns the image dir."""
    dest = image_dir(layout, manifest_digest)
    if os.path.isdir(os.path.join(dest, "rootfs")):
        return dest
    manifest = read_manifest(layout, manifest_digest)
    config = json.loads(store.read_verified(layout, manifest["config"]["digest"]))
    tmp = f"{dest}.tmp-{os.getpid()}"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    rootfs = os.path.join(tmp, "rootfs")
    os.makedirs(rootfs, mode=0o755)
    try:
        for layer in manifest.get("layers", []):
            mt = layer.get("mediaType", LAYER_TYPES[1])
            if mt not in LAYER_TYPES:
                raise BadRequest(f"unsupported layer media type {mt!r}")
            with store.open_blob(layout, layer["digest"]) as raw:
                reader = store.HashingReader(raw)
                apply_layer(rootfs, reader)
                got = reader.drain()
            if got != layer["digest"]:
                raise DigestMismatch(f"layer {layer['digest']} on disk hashes to {got}; "
                                     "refusing it")
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


def image_size(layout: Layout, manifest_digest: str) -> int:
    """Bytes the compressed layers take (a lower bound for the unpack)."""
    m = read_manifest(layout, manifest_digest)
    return sum(int(x.get("size", 0)) for x in m.get("layers", []))


def mode_of(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)
