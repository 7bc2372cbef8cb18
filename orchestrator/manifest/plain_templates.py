"""Templates that only name variables (``release = {{ release }}``) rendered without Jinja2,
with exactly the text Jinja2 would give: importing and compiling Jinja2 cost an apply ~30 ms,
and most manifests and template steps do nothing more than this.

A text qualifies when its only markup is ``{{ NAME }}`` (spaces optional), no name is a
literal Jinja2 reads otherwise (``true``, ``none``, ...), it has no ``\\r`` (Jinja2 turns line
ends into ``\\n``), and every name is given a string or a number. Anything else, and anything
that would fail (an undefined name, a limit), goes to Jinja2 (``manifest.templates``), which
says why in its own words.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Optional, Set

_EXPR = re.compile(r"\{\{[ \t]*([A-Za-z_][A-Za-z0-9_]*)[ \t]*\}\}")
_LITERALS = frozenset({"true", "false", "none", "True", "False", "None"})
MAX_TEMPLATE = 1 << 20          # as manifest.templates (kept in step by a test)
MAX_OUTPUT = 1 << 20


def names(text: str) -> Optional[Set[str]]:
    """The variables a plain template names; None when the text is not one."""
    if "\r" in text or len(text) > MAX_TEMPLATE:
        return None
    found, pos = set(), 0
    for m in _EXPR.finditer(text):
        literal = text[pos:m.start()]
        if literal.endswith("{") or _has_markup(literal) or m.group(1) in _LITERALS:
            return None
        found.add(m.group(1))
        pos = m.end()
    if _has_markup(text[pos:]):
        return None
    return found


def render(text: str, variables: Mapping[str, Any]) -> Optional[str]:
    """The text Jinja2 would render; None when Jinja2 must do it."""
    wanted = names(text)
    if wanted is None:
        return None
    for n in wanted:
        v = variables.get(n, _MISSING)
        if v is _MISSING or not isinstance(v, (str, int, float)):
            return None
    out = _EXPR.sub(lambda m: str(variables[m.group(1)]), text)
    return out if len(out) <= MAX_OUTPUT else None


def _has_markup(text: str) -> bool:
    return "{{" in text or "{%" in text or "{#" in text


_MISSING = object()
