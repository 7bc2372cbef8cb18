"""The layer store: each layer unpacked once on a host, read-only, under ``layers/<diff_id>``,
in overlay's form; an image is the list of its layers, and a container's root an overlay with
them as lower directories (see ``container.create``).

A release that changes one small layer unpacks only that layer. An image whose layers do not
fit one overlay mount (more than ``MAX_LOWERS``, or a mount option longer than a page) is
flattened into ``images/<manifest>/rootfs`` as before. Each layer is verified while it is
unpacked (its blob digest and its diff_id), into a temporary directory renamed into place
only when whole: a layer directory that exists is complete, and its compressed blob is then
removed (the layer stands for it: ``have`` and admission count it), so a layer takes the
host's disk once. The unpack budget applies to what
one image unpacks now. A layer's directory is keyed by its diff_id alone: it is unpacked on
the lower layers of the image that first brings it (symlinked parents resolve through them),
which is the same for every image built on that base.
"""
from __future__ import annotations

import os
import shutil
import stat
from typing import List, Optional, Sequence

from runtime import protocol, store, unpack
from runtime.errors import AgentFailure, DigestMismatch
from runtime.layout import Layout

MAX_LOWERS = 128
MAX_OPTIONS = 4000          # overlay's mount data is one page; leave room for upper/work


def root_of(layout: Layout) -> str:
    return os.path.join(layout.root, "layers")


def layer_dir(layout: Layout, diff_id: str) -> str:
    return os.path.join(root_of(layout), protocol.split_digest(diff_id))


def fs_of(layout: Layout, diff_id: str) -> str:
    return os.path.join(layer_dir(layout, diff_id), "fs")


def is_present(layout: Layout, diff_id: str) -> bool:
    return os.path.isdir(fs_of(layout, diff_id))


def overlay_options(lowers: Sequence[str], upper: str, work: str) -> str:
    """The mount data for an overlay of ``lowers`` (top first) under ``upper``."""
    return f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work}"


def fits_overlay(layout: Layout, diff_ids: Sequence[str]) -> bool:
    """Whether an image of these layers mounts as one overlay on this host (else flatten)."""
    if not diff_ids or len(diff_ids) > MAX_LOWERS:
        return False
    upper = os.path.join(layout.containers, "x" * 64, "upper")
    return len(overlay_options([fs_of(layout, d) for d in diff_ids], upper, upper)) <= MAX_OPTIONS


def ensure_root(layout: Layout) -> str:
    d = root_of(layout)
    os.makedirs(d, mode=0o700, exist_ok=True)
    if os.stat(d).st_mode & 0o077:
        os.chmod(d, 0o700)
    return d


def unpack_layer(layout: Layout, layer: dict, diff_id: str, lowers: Sequence[str],
                 meter: unpack.Meter, where: str) -> str:
    """Unpack one layer blob into ``layers/<diff_id>/fs`` (``lowers``: the image's layers
    beneath it, top first), verifying its digest and diff_id; returns the fs directory.
    A failure leaves no directory behind."""
    digest = layer["digest"]
    dest = layer_dir(layout, diff_id)
    if is_present(layout, diff_id):
        return fs_of(layout, diff_id)
    ensure_root(layout)
    tmp = f"{dest}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.mkdir(tmp, 0o700)
    fs = os.path.join(tmp, "fs")
    os.mkdir(fs, 0o755)
    try:
        try:
            with store.open_blob(layout, digest) as raw:
                reader = store.HashingReader(raw)
                got_diff = unpack.apply_layer(fs, reader, None, meter, unpack.Stack(fs, lowers))
                got = reader.drain()
        except AgentFailure as exc:
            raise type(exc)(f"{where}: {exc.message}", **exc.extra) from None
        if got != digest:
            raise DigestMismatch(f"{where}: on disk it hashes to {got}; refusing it")
        if got_diff != diff_id:
            raise DigestMismatch(f"{where}: its uncompressed content hashes to {got_diff}, "
                                 f"not to the diff_id {diff_id} its image config names; "
                                 "refusing it")
        with open(os.path.join(tmp, "blob"), "w") as f:
            f.write(digest + "\n")
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # the store holds the layer now, verified; it stands for its blob (``have``, admission), so
    # the compressed copy goes: each layer is on the host's disk once
    store.drop_blob(layout, digest)
    return os.path.join(dest, "fs")


def unpack_layers(layout: Layout, image: str, layers: Sequence[dict], diff_ids: Sequence[str],
                  budget: unpack.Budget) -> List[str]:
    """Unpack the layers of an image that this host does not hold yet (bottom first);
    returns what it unpacked (diff_ids)."""
    meter = unpack.Meter(layout.root, budget)
    lowers: List[str] = []
    done: List[str] = []
    for i, (layer, diff_id) in enumerate(zip(layers, diff_ids), 1):
        if not is_present(layout, diff_id):
            unpack_layer(layout, layer, diff_id, lowers, meter,
                         f"image {image} layer {i}/{len(layers)} {layer['digest']}")
            done.append(diff_id)
        lowers.insert(0, fs_of(layout, diff_id))
    return done


def lowers_of(layout: Layout, diff_ids: Sequence[str]) -> Optional[List[str]]:
    """The lower directories (top first) of an image's layers, or None if one is missing."""
    out = []
    for d in reversed(diff_ids):
        if not is_present(layout, d):
            return None
        out.append(fs_of(layout, d))
    return out


def collect(layout: Layout, keep: Sequence[str]) -> List[str]:
    """Remove every layer directory (and leftover temporary one) not in ``keep`` (diff_ids);
    the caller holds the converge lock. Returns the removed diff_ids."""
    keep_hex = {protocol.split_digest(d) for d in keep}
    removed = []
    try:
        names = sorted(os.listdir(root_of(layout)))
    except FileNotFoundError:
        return removed
    for name in names:
        if name in keep_hex:
            continue
        shutil.rmtree(os.path.join(root_of(layout), name), ignore_errors=True)
        if ".tmp-" not in name:
            removed.append("sha256:" + name)
    return removed


def flatten(layout: Layout, diff_ids: Sequence[str], dest: str, meter: unpack.Meter) -> None:
    """Copy the merged view of these stored layers (bottom first) into ``dest``, for an
    image too deep for one overlay mount: a whiteout removes what is below, an opaque
    directory drops what is below. Each directory of ``dest`` is made a real directory before
    anything is written into it, so nothing is ever written through a symlink."""
    for diff_id in diff_ids:
        src_root = fs_of(layout, diff_id)
        for dirpath, dirnames, filenames in os.walk(src_root):
            rel = os.path.relpath(dirpath, src_root)
            here = dest if rel == "." else os.path.join(dest, rel)
            for name in sorted(dirnames) + sorted(filenames):
                src, dst = os.path.join(dirpath, name), os.path.join(here, name)
                st = os.lstat(src)
                if unpack.is_whiteout(src):
                    if os.path.lexists(dst):
                        unpack._remove(dst)
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if os.path.lexists(dst) and (os.path.islink(dst) or not os.path.isdir(dst)
                                                 or _opaque(src)):
                        unpack._remove(dst)
                    if not os.path.lexists(dst):
                        meter.entry(os.path.join(rel, name))
                        os.mkdir(dst, 0o700)
                    _copy_meta(st, dst)
                    continue
                if os.path.lexists(dst):
                    unpack._remove(dst)
                meter.entry(os.path.join(rel, name))
                if stat.S_ISLNK(st.st_mode):
                    os.symlink(os.readlink(src), dst)
                elif stat.S_ISREG(st.st_mode):
                    meter.data(os.path.join(rel, name), st.st_size)
                    shutil.copyfile(src, dst, follow_symlinks=False)
                elif stat.S_ISFIFO(st.st_mode):
                    os.mkfifo(dst, 0o600)
                else:
                    continue
                _copy_meta(st, dst)
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]


def _opaque(path: str) -> bool:
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


def _copy_meta(st: os.stat_result, dst: str) -> None:
    os.lchown(dst, st.st_uid, st.st_gid)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_mtime_ns, st.st_mtime_ns), follow_symlinks=False)


def by_blob(layout: Layout) -> dict:
    """blob digest -> diff_id of every stored layer (a layer in the store stands for its blob:
    ``have`` reports the blob present and nothing ships it again)."""
    out = {}
    try:
        names = os.listdir(root_of(layout))
    except FileNotFoundError:
        return out
    for name in names:
        if ".tmp-" in name:
            continue
        try:
            with open(os.path.join(root_of(layout), name, "blob")) as f:
                out[f.read().strip()] = "sha256:" + name
        except OSError:
            continue
    return out


def held(layout: Layout) -> list:
    """The layers this host holds, [{diff_id, blob}] (what a sender dedups file contents
    against: ``runtime.wire``)."""
    return [{"diff_id": d, "blob": b} for b, d in sorted(by_blob(layout).items())]
