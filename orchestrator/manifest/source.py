"""Reading manifest files: YAML documents that remember the line of every key and item.

``read_documents(path)`` turns a file into a list of ``Doc`` whose mappings and
sequences are ``LMap``/``LList`` (plain dict/list subclasses carrying line numbers),
so that every later error can say ``file:line path: message``. Nothing outside
``orchestrator.manifest`` reads raw YAML.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping

import jinja2
import yaml

from orchestrator.errors import ManifestError


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


@dataclass(frozen=True)
class Doc:
    file: str        # as displayed in errors (relative to the working directory when below it)
    path: str        # absolute path of the file
    index: int       # 0-based document number within the file
    line: int        # first line of the document
    data: Any        # LMap (or whatever the document holds; validation rejects non-mappings)


def display_path(path: str) -> str:
    absolute = os.path.abspath(path)
    rel = os.path.relpath(absolute)
    return absolute if rel.startswith("..") else rel


_CONSTRUCTOR = yaml.constructor.SafeConstructor()


def _convert(node: yaml.Node, file: str) -> Any:
    if isinstance(node, yaml.MappingNode):
        out = LMap()
        out.line = node.start_mark.line + 1
        out.key_lines = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise ManifestError("mapping keys must be plain scalars", file=file,
                                    line=key_node.start_mark.line + 1)
            key = _CONSTRUCTOR.construct_object(key_node)
            if isinstance(key, (list, dict)) or key is None:
                raise ManifestError(f"invalid key {key!r}", file=file, line=key_node.start_mark.line + 1)
            if key in out:
                raise ManifestError(f'duplicate key "{key}" (first on line {out.key_lines[key]})',
                                    file=file, line=key_node.start_mark.line + 1)
            out[key] = _convert(value_node, file)
            out.key_lines[key] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        seq = LList()
        seq.line = node.start_mark.line + 1
        seq.item_lines = []
        for item in node.value:
            seq.append(_convert(item, file))
            seq.item_lines.append(item.start_mark.line + 1)
        return seq
    try:
        value = _CONSTRUCTOR.construct_object(node)
        if type(value) is int:
            value = YInt(value)
            value.src = node.value
        return value
    except yaml.YAMLError as exc:
        raise ManifestError(f"bad value: {exc}", file=file, line=node.start_mark.line + 1) from None


def read_documents(path: str) -> List[Doc]:
    """All YAML documents of one file, with line numbers; a syntax error is located."""
    try:
        with open(path, "r", encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read: {exc}", file=display_path(path)) from None
    return parse_documents(text, path)


def parse_documents(text: str, path: str) -> List[Doc]:
    """The YAML documents of a manifest's text (``path`` names it in errors)."""
    file = display_path(path)
    docs = []
    try:
        for i, node in enumerate(yaml.compose_all(text, Loader=yaml.SafeLoader)):
            if node is None:
                continue
            docs.append(Doc(file, os.path.abspath(path), i, node.start_mark.line + 1, _convert(node, file)))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or str(exc)
        raise ManifestError(f"YAML syntax error: {problem}", file=file, line=line) from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"YAML error: {exc}", file=file) from None
    return docs


def make_jinja() -> jinja2.Environment:
    """The one Jinja2 environment for manifests and template steps (StrictUndefined)."""
    return jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                              autoescape=False)


def render_text(env: jinja2.Environment, text: str, variables: Mapping[str, Any]) -> str:
    """Render one template string; raises ValueError with a readable reason."""
    try:
        return env.from_string(text).render(**variables)
    except jinja2.UndefinedError as exc:
        raise ValueError(f"undefined variable: {exc.message}") from None
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(f"template syntax error (line {exc.lineno}): {exc.message}") from None
    except jinja2.TemplateError as exc:
        raise ValueError(f"template error: {exc}") from None


def render_tree(value: Any, env: jinja2.Environment, variables: Mapping[str, Any], file: str,
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
    if isinstance(value, str) and ("{{" in value or "{%" in value):
        try:
            return TStr(render_text(env, value, variables))
        except ValueError as exc:
            raise ManifestError(str(exc), file=file, line=line, path=path) from None
    return value
