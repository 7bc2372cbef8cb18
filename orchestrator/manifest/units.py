"""Parsers for the small value languages of manifests: durations, sizes, ports, volumes.

Each parser takes the raw YAML value and returns the normalised value, or raises
``ValueError`` with the text that follows the located prefix of a ManifestError
(``expected "HOST:CONTAINER", got "80"``).
"""
from __future__ import annotations

import re
from typing import Optional, Tuple

from runtime import platforms

PLATFORMS = platforms.NAMES     # the one platform table is runtime/platforms.py
# platform -> (OCI architecture, OCI variant or None, Debian architecture)
PLATFORM_ARCH = {p.name: (p.arch, p.variant, p.debian) for p in platforms.TABLE}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?[bB]?)\s*$")
_SIZE_UNIT = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}

_PORT = re.compile(r"^(\d+):(\d+)(?:/(tcp|udp))?$")
_NAME = re.compile(r"^[a-z0-9]([a-z0-9_.-]{0,62})$")
_LINK_RATE = re.compile(r"^\d+(\.\d+)?(bit|kbit|mbit|gbit)$")


def parse_duration(value: object) -> float:
    """``1s``, ``500ms``, ``2m``, ``1h`` or a plain number of seconds -> float seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 1s or 500ms, got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"expected a non-negative duration, got {value}")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return round(float(m.group(1)) * _DURATION_UNIT[m.group(2)], 6)
    raise ValueError(f'expected a duration like 1s or 500ms, got "{value}"')


def parse_size(value: object) -> int:
    """``128M``, ``1G``, ``512Mi``, ``64k`` or an int of bytes -> int bytes (binary units)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size like 128M, got {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"expected a positive size, got {value}")
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            n = int(float(m.group(1)) * _SIZE_UNIT[m.group(2).lower()])
            if n > 0:
                return n
    raise ValueError(f'expected a size like 128M or 1G, got "{value}"')


def parse_port(value: object) -> Tuple[int, int, str]:
    """``"8080:80"`` or ``"5353:53/udp"`` -> (host, container, protocol)."""
    text = str(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else None
    m = _PORT.match(text) if text is not None else None
    if not m:
        raise ValueError(f'expected "HOST:CONTAINER", got "{value}"')
    host, container = int(m.group(1)), int(m.group(2))
    for n in (host, container):
        if not 1 <= n <= 65535:
            raise ValueError(f"port {n} out of range 1-65535 in \"{value}\"")
    return host, container, m.group(3) or "tcp"


def parse_volume(value: object) -> Tuple[str, str, bool, bool]:
    """``"data:/data"``, ``"data:/data:ro"``, ``"media:/m:shared"`` or ``"media:/m:ro,shared"``
    -> (name, dest, readonly, shared). A volume belongs to its service unless ``shared``."""
    if not isinstance(value, str):
        raise ValueError(f'expected "NAME:/PATH[:ro][,shared]", got {value!r}')
    parts = value.split(":")
    readonly = shared = False
    if len(parts) == 3:
        opts = parts[2].split(",")
        if not opts or any(o not in ("ro", "rw", "shared") for o in opts) or \
                ("ro" in opts and "rw" in opts):
            raise ValueError(f'expected options ro, rw and/or shared after the path, got "{value}"')
        readonly, shared = "ro" in opts, "shared" in opts
        parts = parts[:2]
    if len(parts) != 2 or not parts[1].startswith("/") or not _NAME.match(parts[0]):
        raise ValueError(f'expected "NAME:/PATH[:ro][,shared]", got "{value}"')
    return parts[0], normalise_dest(parts[1]), readonly, shared


def parse_mode(value: object) -> int:
    """``0644`` / ``"0755"`` / ``"755"`` / 420 -> int permission bits."""
    if isinstance(value, bool):
        raise ValueError(f"expected an octal mode like \"0644\", got {value!r}")
    if isinstance(value, int):
        # written as 644 or 0644 in YAML: the source text is octal either way
        text = getattr(value, "src", "")
        n = int(text.replace("o", ""), 8) if re.fullmatch(r"0?o?[0-7]{3,4}", text) else value
    elif isinstance(value, str) and re.fullmatch(r"0?o?[0-7]{3,4}", value):
        n = int(value.replace("o", ""), 8)
    else:
        raise ValueError(f'expected an octal mode like "0644", got "{value}"')
    if not 0 <= n <= 0o7777:
        raise ValueError(f'expected an octal mode like "0644", got "{value}"')
    return n


def parse_owner(value: object) -> Tuple[int, int]:
    """``"1000:1000"`` or ``1000`` -> (uid, gid) numeric."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value, value
    if isinstance(value, str):
        m = re.fullmatch(r"(\d+)(?::(\d+))?", value)
        if m:
            uid = int(m.group(1))
            return uid, int(m.group(2)) if m.group(2) else uid
    raise ValueError(f'expected a numeric owner "UID:GID", got "{value}"')


def parse_percent_or_int(value: object) -> Tuple[Optional[int], Optional[float]]:
    """``2`` -> (2, None); ``"25%"`` -> (None, 25.0)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value, None
    if isinstance(value, str):
        m = re.fullmatch(r"(\d+(?:\.\d+)?)%", value.strip())
        if m and 0 < float(m.group(1)) <= 100:
            return None, float(m.group(1))
        if value.isdigit() and int(value) >= 1:
            return int(value), None
    raise ValueError(f'expected a number of hosts >= 1 or a percentage like "25%", got "{value}"')


def check_name(value: object, what: str = "name") -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(f'expected a {what} of lower-case letters, digits, ".", "_", "-", got "{value}"')
    return value


def check_link_rate(value: object) -> str:
    if not isinstance(value, str) or not _LINK_RATE.match(value):
        raise ValueError(f'expected a rate like "10mbit" or "512kbit", got "{value}"')
    return value


def rate_bytes(value: str) -> float:
    """Bytes per second of a rate like "2mbit" (tc's units: bits, powers of 1000)."""
    m = _LINK_RATE.match(value)
    if not m:
        raise ValueError(f'expected a rate like "10mbit" or "512kbit", got "{value}"')
    scale = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}[m.group(2)]
    return float(value[:-len(m.group(2))]) * scale / 8


def normalise_dest(path: str) -> str:
    """An absolute path inside the image with no ``.``/``..``/double slashes."""
    if not path.startswith("/"):
        raise ValueError(f'expected an absolute path inside the image, got "{path}"')
    parts = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise ValueError(f'".." is not allowed in an image path, got "{path}"')
        parts.append(part)
    return "/" + "/".join(parts)
