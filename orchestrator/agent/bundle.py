"""Build the host agent as one zipapp, byte-for-byte reproducible and named by its digest.

The archive holds ``__main__.py`` and the ``runtime`` package sources (no bytecode), sorted,
with a fixed timestamp and fixed modes, stored uncompressed-then-deflated with fixed settings,
so the same sources give the same digest on any machine.
"""
from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path
from typing import Tuple, Union

import runtime

FIXED_TIME = (1980, 1, 1, 0, 0, 0)
# Entry point. A zipapp cannot cache bytecode, so every verb would compile the agent's sources
# again (~40 ms). On first use the sources are extracted next to the pyz, into a directory
# named after the pyz (itself named by its digest) and its size, compiled there at once, and
# imported from there with the usual __pycache__ (the launcher, orchestrator/agent/client.py,
# imports from that directory directly); anything unusual (read-only disk, not a zip) falls
# back to the zip.
MAIN = b"""import os
import sys


def _cached_sources():
    pyz = os.path.abspath(sys.argv[0])
    try:
        st = os.stat(pyz)
        cache = os.path.join(os.path.dirname(pyz), ".cache",
                             "%s-%d" % (os.path.basename(pyz), st.st_size))
        if not os.path.isdir(cache):
            import shutil
            import zipfile
            tmp = "%s.tmp%d" % (cache, os.getpid())
            with zipfile.ZipFile(pyz) as zf:
                zf.extractall(tmp, [n for n in zf.namelist() if n.startswith("runtime/")])
            import compileall   # every module now, not on the first verb that needs it
            compileall.compile_dir(os.path.join(tmp, "runtime"), quiet=2,
                                   ddir=os.path.join(cache, "runtime"))
            try:
                os.rename(tmp, cache)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
        if os.path.isfile(os.path.join(cache, "runtime", "cli.py")):
            sys.path.insert(0, cache)
            sys.dont_write_bytecode = False  # the cache is the agent's own directory
    except (OSError, ValueError, ImportError):
        pass


if not os.environ.get("ORCH_AGENT_NO_CACHE"):
    _cached_sources()
from runtime.cli import main  # noqa: E402

sys.exit(main())
"""
SHEBANG = b"#!/usr/bin/env python3\n"


def _sources() -> list:
    pkg = Path(runtime.__file__).resolve().parent
    files = []
    for p in sorted(pkg.rglob("*.py")):
        if "__pycache__" in p.parts:
            continue
        files.append(("runtime/" + p.relative_to(pkg).as_posix(), p.read_bytes()))
    return sorted(files)


def _entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (0o644 << 16)
    info.create_system = 3
    return info


def render_agent_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in [("__main__.py", MAIN)] + _sources():
            zf.writestr(_entry(name), data, compress_type=zipfile.ZIP_DEFLATED,
                        compresslevel=9)
    return SHEBANG + buf.getvalue()


def build_agent_pyz(out_dir: Union[str, os.PathLike]) -> Tuple[Path, str]:
    """Write ``orch-agent-<hex12>.pyz`` into ``out_dir``; return (path, "sha256:<hex>").

    Deflating the archive is the slow part, so a small memo keyed by the sources' hash lets an
    unchanged agent skip it (every `orch plan/apply` asks for the agent)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sources = _sources()
    key = hashlib.sha256(MAIN + b"".join(n.encode() + b"\0" + d + b"\0" for n, d in sources)).hexdigest()
    memo = out / f".sources-{key[:24]}"
    try:
        hexd = memo.read_text().strip()
        path = out / f"orch-agent-{hexd[:12]}.pyz"
        if path.exists():
            return path, "sha256:" + hexd
    except OSError:
        pass
    data = render_agent_zip()
    hexd = hashlib.sha256(data).hexdigest()
    path = out / f"orch-agent-{hexd[:12]}.pyz"
    if not path.exists() or hashlib.sha256(path.read_bytes()).hexdigest() != hexd:
        tmp = path.with_suffix(f".tmp{os.getpid()}")     # two commands sharing one ORCH_HOME
        tmp.write_bytes(data)
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
    tmp_memo = memo.with_name(f"{memo.name}.tmp{os.getpid()}")
    tmp_memo.write_text(hexd + "\n")
    os.replace(tmp_memo, memo)
    return path, "sha256:" + hexd
