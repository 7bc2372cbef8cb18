#!/usr/bin/env python3
"""How far each decompression bomb gets before the unpacker stops it, and what a sparse file
costs, on a tmpfs of its own (as a small SD card would be).

    .venv/bin/python bench/unpack_bombs.py [--size-mb 128] [--inodes 6000]

Needs root (it mounts a tmpfs in a temporary directory and unmounts it). For each layer of
tests/runtime/hostile.py: its gzip size, the seconds until it was refused (or unpacked), the
compressed bytes read by then, and the bytes and inodes it held on the tmpfs at that moment
(after a refusal the unpacker's caller removes them: shown as "left").
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from runtime import unpack  # noqa: E402
from runtime.errors import AgentFailure  # noqa: E402
from tests.runtime import hostile  # noqa: E402


class Counting(io.RawIOBase):
    def __init__(self, data: bytes):
        self.f = io.BytesIO(data)
        self.n = 0

    def readable(self):
        return True

    def read(self, n=-1):
        b = self.f.read(n)
        self.n += len(b)
        return b


def used(path: str):
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize, st.f_files - st.f_ffree


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=128)
    ap.add_argument("--inodes", type=int, default=6000)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="orch-bench-bombs-")
    mnt = os.path.join(work, "fs")
    os.mkdir(mnt)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={args.size_mb}m,nr_inodes={args.inodes}",
                    "tmpfs", mnt], check=True)
    try:
        layers = {
            "zeros 1 GiB in 128 files": hostile.zeros_bomb(1 << 30, files=128),
            "zeros 10 GiB in one file": hostile.zeros_bomb(10 << 30, name="big"),
            "30000 empty files": hostile.empty_files(30000),
            "sparse 10 GiB (GNU)": hostile.sparse_layer(os.path.join(work, "s"), 10 << 30,
                                                         [(0, b"head"), ((10 << 30) - 4, b"t")]),
            "PAX header of 64 MiB": hostile.pax_header_bomb(64 << 20),
        }
        print(f"tmpfs {args.size_mb} MiB, {args.inodes} inodes; default budget {unpack.Budget()}")
        print(f"{'layer':28} {'gzip':>9} {'seconds':>8} {'read':>10} {'held':>11} {'inodes':>6}"
              f" {'left':>6}  outcome")
        for name, data in layers.items():
            root = os.path.join(mnt, "rootfs")
            os.mkdir(root)
            base_bytes, base_inodes = used(mnt)
            src = Counting(data)
            start = time.perf_counter()
            try:
                unpack.apply_layer(root, src, meter=unpack.Meter(root, unpack.Budget()))
                outcome = "unpacked"
            except AgentFailure as exc:
                outcome = f"{type(exc).__name__}: {exc.message}"
            took = time.perf_counter() - start
            held, inodes = used(mnt)
            shutil.rmtree(root)
            left = used(mnt)[0] - base_bytes
            print(f"{name:28} {len(data):>9} {took:>8.3f} {src.n:>10} {held - base_bytes:>11}"
                  f" {inodes - base_inodes:>6} {left:>6}  {outcome[:90]}")
    finally:
        subprocess.run(["umount", mnt], check=True)
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
