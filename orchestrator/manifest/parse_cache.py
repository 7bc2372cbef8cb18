"""Parsed manifests kept between commands, so one whose manifests did not change (an `orch apply`
after an edit of the app's code) neither imports yaml nor parses (~15-25 ms of every command).

An entry is the exact trees ``yaml_parse.parse`` returned for a text (``LMap``/``LList`` with
their lines, ``YInt`` with its source text, scalars), as JSON, under
``$ORCH_HOME/cache/manifests/<key>.json``. The key is the sha256 of the text, of the source of
the parser, its limits and this module, and of the installed yaml package's identity: a change
to any of them is a miss, and a miss parses as before. Only a successful parse is stored (an error always comes from the
parser), only once the manifests loaded without a problem (``flush``: bad input writes
nothing), and only trees of scalars JSON keeps exactly (str, int, float, bool, null): a document
holding a timestamp or binary value is not cached. An entry that does not decode to such trees
(truncated, edited by hand, or beyond the parser's limits) is a miss, never an error. JSON, not pickle or marshal: reading an
entry cannot run code or crash the interpreter.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

from orchestrator.manifest.source import MAX_DEPTH, MAX_FILE_BYTES, MAX_SCALAR, MAX_VALUES, LList, LMap, YInt

FORMAT = "orch-parse-1"
KEEP = 256                      # entries; the oldest go when a save finds more
MAX_ENTRY = 16 * MAX_FILE_BYTES     # bytes of one entry read (lines and markers make it bigger)
SOURCES = ("yaml_parse.py", "source.py", "parse_cache.py")   # what makes the trees: in the key

Parsed = List[Tuple[int, int, Any]]


class Uncacheable(ValueError):
    """A tree holding a value JSON would not give back as it is."""


# --- pure: trees <-> JSON values --------------------------------------------------------------
def _scalar_ok(value: Any) -> bool:
    return value is None or type(value) in (str, int, float, bool)


def encode(tree: Any) -> Any:
    """A tree as JSON values: a mapping {"m": line, "k": [[key, key line, value], ...]}, a
    sequence {"l": line, "i": [[item line, value], ...]}, a YInt {"y": value, "s": source}, a
    scalar as itself (scalars are never dicts, so every dict is one of these)."""
    if isinstance(tree, LMap):
        return {"m": tree.line, "k": [[_key(k), tree.key_lines[k], encode(v)] for k, v in tree.items()]}
    if isinstance(tree, LList):
        return {"l": tree.line, "i": [[line, encode(v)] for line, v in zip(tree.item_lines, tree)]}
    if isinstance(tree, YInt):
        return {"y": int(tree), "s": tree.src}
    if _scalar_ok(tree):
        return tree
    raise Uncacheable(f"{type(tree).__name__} value")


def _key(key: Any) -> Any:
    if not _scalar_ok(key):
        raise Uncacheable(f"{type(key).__name__} key")
    return key


def decode(value: Any, budget: Optional[List[int]] = None) -> Any:
    """``encode``'s inverse; ValueError on anything ``encode`` does not make, or on a tree the
    parser would have refused (deeper, longer or bigger than its limits). ``budget``: values
    left for the file (shared by its documents)."""
    return _decode(value, 1, [MAX_VALUES] if budget is None else budget)


def _decode(value: Any, depth: int, budget: List[int]) -> Any:
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_DEPTH + 1:
        raise ValueError("beyond the limits")
    if isinstance(value, dict):
        if value.keys() == {"m", "k"}:
            out = LMap()
            out.line, out.key_lines = _int(value["m"]), {}
            for key, line, v in _rows(value["k"], 3):
                if not _scalar_ok(key) or key is None or key in out or \
                        (type(key) is str and len(key) > MAX_SCALAR):
                    raise ValueError("bad key")
                out[key] = _decode(v, depth + 1, budget)
                out.key_lines[key] = _int(line)
            return out
        if value.keys() == {"l", "i"}:
            seq = LList()
            seq.line, seq.item_lines = _int(value["l"]), []
            for line, v in _rows(value["i"], 2):
                seq.append(_decode(v, depth + 1, budget))
                seq.item_lines.append(_int(line))
            return seq
        if value.keys() == {"y", "s"} and type(value["s"]) is str and len(value["s"]) <= MAX_SCALAR:
            out_int = YInt(_int(value["y"]))
            out_int.src = value["s"]
            return out_int
        raise ValueError("bad entry")
    if type(value) is str and len(value) > MAX_SCALAR:
        raise ValueError("scalar too long")
    if _scalar_ok(value):
        return value
    raise ValueError("bad value")


def _int(v: Any) -> int:
    if type(v) is not int:
        raise ValueError("bad number")
    return v


def _rows(rows: Any, width: int) -> List[list]:
    if not isinstance(rows, list) or not all(isinstance(r, list) and len(r) == width for r in rows):
        raise ValueError("bad rows")
    return rows


def key_of(text: str, parser_source: bytes, yaml_identity: str) -> str:
    """``parser_source``: the bytes of SOURCES, one after the other."""
    h = hashlib.sha256()
    for part in (FORMAT.encode(), hashlib.sha256(parser_source).digest(), yaml_identity.encode(),
                 text.encode("utf-8", "surrogatepass")):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


# --- the edge: files under $ORCH_HOME ---------------------------------------------------------
def cache_dir() -> str:
    from orchestrator.image.store import default_home
    return os.path.join(default_home(), "cache", "manifests")


@functools.lru_cache(maxsize=1)
def _identity() -> Optional[Tuple[bytes, str]]:
    """(the bytes of SOURCES, the installed yaml's identity), read once per process (every
    manifest's load and save asks); None when either cannot be read."""
    try:
        parser = b""
        for name in SOURCES:
            with open(os.path.join(os.path.dirname(__file__), name), "rb") as f:
                parser += f.read()
        spec = importlib.util.find_spec("yaml")
        st = os.stat(spec.origin) if spec and spec.origin else None
    except (OSError, ImportError, ValueError):
        return None
    if st is None:
        return None
    return parser, f"{spec.origin}:{st.st_size}:{st.st_mtime_ns}"


def _key_here(text: str) -> Optional[str]:
    """The key of ``text`` for this parser and this yaml (None when either cannot be read)."""
    ident = _identity()
    return key_of(text, *ident) if ident is not None else None


def load(text: str) -> Optional[Parsed]:
    """The trees of ``text`` parsed before (by this process, or stored), else None."""
    key = _key_here(text)
    if key is None:
        return None
    try:
        data = _PENDING.get(key)
        if data is None:
            with open(os.path.join(cache_dir(), key + ".json"), "rb") as f:
                data = f.read(MAX_ENTRY + 1)
            if len(data) > MAX_ENTRY:
                return None
        rows = json.loads(data)
        budget = [MAX_VALUES]
        return [(_int(i), _int(line), decode(tree, budget)) for i, line, tree in _rows(rows, 3)]
    except (OSError, ValueError, TypeError, RecursionError, MemoryError):
        return None


_PENDING: Dict[str, bytes] = {}     # key -> entry, parsed by this process, not yet written


def save(text: str, parsed: Parsed) -> None:
    """Note ``parsed`` for ``text``; ``flush`` writes it."""
    key = _key_here(text)
    if key is None:
        return
    try:
        _PENDING[key] = json.dumps([[i, line, encode(tree)] for i, line, tree in parsed]).encode()
    except (Uncacheable, ValueError, RecursionError):
        return


def forget() -> None:
    _PENDING.clear()


def flush() -> None:
    """Write what ``save`` noted (best effort: a cache that cannot be written is no error)."""
    if not _PENDING:
        return
    d = cache_dir()
    try:
        os.makedirs(d, mode=0o700, exist_ok=True)
        for key, data in sorted(_PENDING.items()):
            fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, os.path.join(d, key + ".json"))
            except OSError:
                _unlink(tmp)
                raise
        _prune(d)
    except OSError:
        pass
    _PENDING.clear()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _prune(d: str) -> None:
    """At most KEEP entries, and no temporary file a killed writer left over an hour ago."""
    now = time.time()
    for n in os.listdir(d):
        if n.startswith(".tmp-"):
            try:
                if now - os.stat(os.path.join(d, n)).st_mtime > 3600:
                    _unlink(os.path.join(d, n))
            except OSError:
                pass
    names = [n for n in os.listdir(d) if n.endswith(".json")]
    if len(names) <= KEEP:
        return
    by_age = sorted(names, key=lambda n: os.stat(os.path.join(d, n)).st_mtime_ns)
    for n in by_age[:len(names) - KEEP]:
        try:
            os.unlink(os.path.join(d, n))
        except OSError:
            pass
