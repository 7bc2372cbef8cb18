"""Reading manifest files: YAML documents that remember the line of every key and item.

``read_documents(path)`` turns a file into a list of ``Doc`` whose mappings and
sequences are ``LMap``/``LList`` (plain dict/list subclasses carrying line numbers),
so that every later error can say ``file:line path: message``. Nothing outside
``orchestrator.manifest`` reads raw YAML.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping

from orchestrator.errors import ManifestError
from runtime.records import Record, record

__all__ = ["Doc", "LList", "LMap", "Renderer", "TStr", "YInt", "display_path", "has_markup", "read_documents",
           "render_tree"]

# What a manifest file may hold. Real manifests are a few KiB; these refuse hostile files early.
MAX_FILE_BYTES = 1 << 20       # one manifest file
MAX_DEPTH = 64                 # nesting of mappings and sequences (aliases included)
MAX_SCALAR = 64 << 10          # characters in one scalar
MAX_VALUES = 20_000            # values in one file once aliases are expanded
MAX_INT_DIGITS = 24            # digits of an integer (int64 has 19)


class LMap(dict):
    """A YAML mapping that knows its own line and the line of each key (1-based)."""

    line: int = 0
    key_lines: Dict[Any, int]


class LList(list):
    """A YAML sequence that knows its own line and the line of each item (1-based)."""

    line: int = 0
    item_lines: List[int]


class YInt(int):
    """An int read from YAML that keeps its source text (so ``mode: 644`` can mean octal)."""

    src: str = ""


class TStr(str):
    """A string produced by rendering a Jinja2 expression (so '3' may stand for the int 3)."""


@record
class Doc(Record):
    file: str        # as displayed in errors (relative to the working directory when below it)
    path: str        # absolute path of the file
    index: int       # 0-based document number within the file
    line: int        # first line of the document
    data: Any        # LMap (or whatever the document holds; validation rejects non-mappings)


def display_path(path: str) -> str:
    absolute = os.path.abspath(path)
    rel = os.path.relpath(absolute)
    return absolute if rel.startswith("..") else rel


def read_documents(path: str) -> List[Doc]:
    """All YAML documents of one file, with line numbers; a syntax error or a file beyond the
    limits above is refused with a located error."""
    file = display_path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            raise ManifestError(f"larger than {MAX_FILE_BYTES} bytes: not a manifest", file=file)
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read: {exc}", file=file) from None
    return parse_documents(text, path)


def parse_documents(text: str, path: str) -> List[Doc]:
    """The YAML documents of a manifest's text (``path`` names it in errors), within the limits.
    A text parsed before is read from ``parse_cache`` (the same trees), else ``yaml_parse``."""
    file = display_path(path)
    if len(text) > MAX_FILE_BYTES:
        raise ManifestError(f"larger than {MAX_FILE_BYTES} bytes: not a manifest", file=file)
    from orchestrator.manifest import parse_cache
    parsed = parse_cache.load(text)
    if parsed is None:
        from orchestrator.manifest import yaml_parse
        parsed = yaml_parse.parse(text, file)
        parse_cache.save(text, parsed)
    return [Doc(file, os.path.abspath(path), i, line, data) for i, line, data in parsed]


def has_markup(text: str) -> bool:
    return "{{" in text or "{%" in text


class Renderer:
    """Renders text with the one sandboxed Jinja2 environment (``manifest.templates``), made on
    first use: manifests with no markup and no template step never import jinja2 (~25 ms)."""

    def __init__(self) -> None:
        self._env = None

    def render(self, text: str, variables: Mapping[str, Any]) -> str:
        """``templates.render_text``: ValueError with a readable reason. A text that only names
        variables is rendered without Jinja2 (``plain_templates``: the same output)."""
        from orchestrator.manifest import plain_templates
        out = plain_templates.render(text, variables)
        if out is not None:
            return out
        from orchestrator.manifest import templates
        if self._env is None:
            self._env = templates.make_jinja()
        return templates.render_text(self._env, text, variables)


def render_tree(value: Any, env: Renderer, variables: Mapping[str, Any], file: str,
                path: tuple, line: int) -> Any:
    """Render every string scalar of a tree that contains Jinja2 markup, keeping line numbers."""
    if isinstance(value, LMap):
        out = LMap()
        out.line, out.key_lines = value.line, dict(value.key_lines)
        for k, v in value.items():
            out[k] = render_tree(v, env, variables, file, path + (k,), value.key_lines.get(k, line))
        return out
    if isinstance(value, LList):
        seq = LList()
        seq.line, seq.item_lines = value.line, list(value.item_lines)
        for i, v in enumerate(value):
            seq.append(render_tree(v, env, variables, file, path + (i,), value.item_lines[i]))
        return seq
    if isinstance(value, str) and has_markup(value):
        try:
            return TStr(env.render(value, variables))
        except ValueError as exc:
            raise ManifestError(str(exc), file=file, line=line, path=path) from None
    return value
