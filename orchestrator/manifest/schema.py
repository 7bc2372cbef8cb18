"""Small validation helpers: every check knows its file, line and key path.

A ``Ctx`` is where a value sits (``manifests/web.yaml:12 services/web/deploy/ports/0``);
the helpers return the checked value or raise a located ``ManifestError``.
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, TypeVar

from orchestrator.errors import ManifestError
from orchestrator.manifest.source import MAX_INT_DIGITS, LList, LMap, TStr
from runtime.records import Record, record

T = TypeVar("T")


@record
class Ctx(Record):
    file: str
    path: Tuple[Any, ...]
    line: Optional[int]

    def error(self, message: str, hint: Optional[str] = None) -> ManifestError:
        return ManifestError(message, file=self.file, line=self.line, path=self.path, hint=hint)

    def key(self, mapping: Any, key: Any) -> "Ctx":
        line = getattr(mapping, "key_lines", {}).get(key, self.line)
        return Ctx(self.file, self.path + (key,), line)

    def item(self, seq: Any, index: int) -> "Ctx":
        lines = getattr(seq, "item_lines", None)
        line = lines[index] if lines and index < len(lines) else self.line
        return Ctx(self.file, self.path + (index,), line)


def describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "a number"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def did_you_mean(word: str, choices: Iterable[str]) -> Optional[str]:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def mapping(value: Any, ctx: Ctx, allowed: Sequence[str], required: Sequence[str] = ()) -> LMap:
    """A mapping with only ``allowed`` keys (unknown keys get a did-you-mean) and all ``required``."""
    if not isinstance(value, dict):
        raise ctx.error(f"expected a mapping, got {describe(value)}")
    for k in value:
        if k not in allowed:
            guess = did_you_mean(k, allowed)
            hint = f'did you mean "{guess}"?' if guess else f"allowed keys: {', '.join(allowed)}"
            raise ctx.key(value, k).error(f'unknown key "{k}"', hint=hint)
    for k in required:
        if k not in value:
            raise ctx.error(f'missing required key "{k}"')
    return value


def one_of_keys(value: LMap, ctx: Ctx, choices: Sequence[str]) -> str:
    present = [k for k in choices if k in value]
    if len(present) != 1:
        what = " or ".join(f'"{c}"' for c in choices)
        if present:
            raise ctx.error(f"expected exactly one of {what}, got {', '.join(present)}")
        raise ctx.error(f"expected one of {what}")
    return present[0]


def string(value: Any, ctx: Ctx, *, nonempty: bool = True) -> str:
    if not isinstance(value, str):
        raise ctx.error(f"expected a string, got {describe(value)}")
    if nonempty and not value:
        raise ctx.error("expected a non-empty string")
    return str(value)


def scalar_string(value: Any, ctx: Ctx) -> str:
    """A string, or a number/boolean written where a string is meant (env values)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise ctx.error(f"expected a string, got {describe(value)}")


def integer(value: Any, ctx: Ctx, *, minimum: Optional[int] = None, maximum: Optional[int] = None) -> int:
    if isinstance(value, TStr) and value.strip().lstrip("-").isdigit():
        if len(value.strip().lstrip("-")) > MAX_INT_DIGITS:
            raise ctx.error(f"expected an integer, got one with more than {MAX_INT_DIGITS} digits")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ctx.error(f"expected an integer, got {describe(value)}")
    if minimum is not None and value < minimum:
        raise ctx.error(f"expected an integer >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ctx.error(f"expected an integer <= {maximum}, got {value}")
    return value


def number(value: Any, ctx: Ctx, *, minimum: float = 0.0) -> float:
    if isinstance(value, TStr):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ctx.error(f"expected a number, got {describe(value)}")
    if value < minimum:
        raise ctx.error(f"expected a number >= {minimum}, got {value}")
    return float(value)


def boolean(value: Any, ctx: Ctx) -> bool:
    if isinstance(value, TStr) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if not isinstance(value, bool):
        raise ctx.error(f"expected true or false, got {describe(value)}")
    return value


def string_list(value: Any, ctx: Ctx, *, nonempty: bool = False) -> List[str]:
    if not isinstance(value, list):
        raise ctx.error(f"expected a list of strings, got {describe(value)}")
    if nonempty and not value:
        raise ctx.error("expected a non-empty list")
    return [string(v, ctx.item(value, i)) for i, v in enumerate(value)]


def string_map(value: Any, ctx: Ctx, *, key_check: Optional[Callable[[str], str]] = None) -> Dict[str, str]:
    if not isinstance(value, dict):
        raise ctx.error(f"expected a mapping of strings, got {describe(value)}")
    out = {}
    for k, v in value.items():
        kctx = ctx.key(value, k)
        if not isinstance(k, str):
            raise kctx.error(f"expected a string key, got {describe(k)}")
        if key_check is not None:
            convert(key_check, k, kctx)
        out[k] = scalar_string(v, kctx)
    return out


def argv(value: Any, ctx: Ctx) -> Tuple[str, ...]:
    """A command: a list of strings, or one string run by ``/bin/sh -c``."""
    if isinstance(value, str):
        if not value.strip():
            raise ctx.error("expected a command, got an empty string")
        return ("/bin/sh", "-c", value)
    if not isinstance(value, list) or not value:
        raise ctx.error(f"expected a command (a list of strings or one string), got {describe(value)}")
    return tuple(scalar_string(v, ctx.item(value, i)) for i, v in enumerate(value))


def convert(fn: Callable[[Any], T], value: Any, ctx: Ctx) -> T:
    """Run a units parser, locating its ValueError."""
    try:
        return fn(value)
    except (ValueError, OverflowError) as exc:
        raise ctx.error(str(exc)) from None


def items(value: Any, ctx: Ctx) -> LList:
    if not isinstance(value, list):
        raise ctx.error(f"expected a list, got {describe(value)}")
    return value
