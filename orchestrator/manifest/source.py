"""Reading manifest files: YAML documents that remember the line of every key and item.

``read_documents(path)`` turns a file into a list of ``Doc`` whose mappings and
sequences are ``LMap``/``LList`` (plain dict/list subclasses carrying line numbers),
so that every later error can say ``file:line path: message``. Nothing outside
``orchestrator.manifest`` reads raw YAML.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Tuple

import yaml

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


_INT_TAG = "tag:yaml.org,2002:int"


if yaml.__with_libyaml__:
    class _Events(yaml.cyaml.CParser):
        """libyaml's parser: about 40x faster at making events than PyYAML's, iterative, and
        refusing flow nesting beyond 1000 itself."""
else:  # pragma: no cover - PyYAML built without libyaml
    class _Events(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser):  # type: ignore[no-redef]
        def __init__(self, text: str):
            yaml.reader.Reader.__init__(self, text)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)


class _Loader(yaml.composer.Composer, _Events, yaml.constructor.SafeConstructor, yaml.resolver.Resolver):
    """A safe loader refusing, while it composes, what no manifest needs: deep nesting, huge
    scalars, long integers, too many values. Each refusal names the line it stopped at."""

    def __init__(self, text: str, file: str):
        _Events.__init__(self, text)
        yaml.composer.Composer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        self.file = file
        self.depth = 0
        self.count = 0

    def refuse(self, message: str, mark) -> ManifestError:
        return ManifestError(message, file=self.file, line=mark.line + 1 if mark else None)

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            return super().compose_node(parent, index)
        event = self.peek_event()
        self.count += 1
        if self.count > MAX_VALUES:
            raise self.refuse(f"more than {MAX_VALUES} values in one file", event.start_mark)
        if isinstance(event, yaml.ScalarEvent):
            if len(event.value) > MAX_SCALAR:
                raise self.refuse(f"a scalar longer than {MAX_SCALAR} characters", event.start_mark)
            return super().compose_node(parent, index)
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise self.refuse(f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def compose_scalar_node(self, anchor):
        node = super().compose_scalar_node(anchor)
        if node.tag == _INT_TAG and sum(c.isdigit() for c in node.value) > MAX_INT_DIGITS:
            raise self.refuse(f"an integer with more than {MAX_INT_DIGITS} digits", node.start_mark)
        return node


def _check_expansion(root: yaml.Node, file: str, budget: int) -> int:
    """The number of values ``root`` expands to through its aliases, computed without expanding
    (each node is sized once); refuses a recursive alias, expansion past ``budget`` and nesting
    past MAX_DEPTH once aliases are followed."""
    sizes: Dict[int, Tuple[int, int]] = {}
    open_nodes = set()

    def visit(node: yaml.Node, level: int) -> Tuple[int, int]:
        known = sizes.get(id(node))
        if known is not None:
            return known
        line = node.start_mark.line + 1
        if id(node) in open_nodes:
            raise ManifestError("recursive alias: an anchor is used inside itself", file=file, line=line)
        if level > MAX_DEPTH:
            raise ManifestError(f"nested deeper than {MAX_DEPTH} levels once aliases are followed",
                                file=file, line=line)
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        size, depth = 1, 1
        open_nodes.add(id(node))
        for child in children:
            child_size, child_depth = visit(child, level + 1)
            size, depth = size + child_size, max(depth, child_depth + 1)
            if size > budget:
                raise ManifestError(f"more than {MAX_VALUES} values once aliases are expanded",
                                    file=file, line=line)
            if depth > MAX_DEPTH:
                raise ManifestError(f"nested deeper than {MAX_DEPTH} levels once aliases are followed",
                                    file=file, line=line)
        open_nodes.discard(id(node))
        sizes[id(node)] = (size, depth)
        return size, depth

    return visit(root, 1)[0]


def _convert(node: yaml.Node, file: str, construct) -> Any:
    if isinstance(node, yaml.MappingNode):
        out = LMap()
        out.line = node.start_mark.line + 1
        out.key_lines = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise ManifestError("mapping keys must be plain scalars", file=file,
                                    line=key_node.start_mark.line + 1)
            key = construct(key_node)
            if isinstance(key, (list, dict)) or key is None:
                raise ManifestError(f"invalid key {key!r}", file=file, line=key_node.start_mark.line + 1)
            if key in out:
                raise ManifestError(f'duplicate key "{key}" (first on line {out.key_lines[key]})',
                                    file=file, line=key_node.start_mark.line + 1)
            out[key] = _convert(value_node, file, construct)
            out.key_lines[key] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        seq = LList()
        seq.line = node.start_mark.line + 1
        seq.item_lines = []
        for item in node.value:
            seq.append(_convert(item, file, construct))
            seq.item_lines.append(item.start_mark.line + 1)
        return seq
    try:
        value = construct(node)
        if type(value) is int:
            value = YInt(value)
            value.src = node.value
        return value
    except (yaml.YAMLError, ValueError, OverflowError) as exc:
        raise ManifestError(f"bad value: {exc}", file=file, line=node.start_mark.line + 1) from None


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
    """The YAML documents of a manifest's text (``path`` names it in errors), within the limits."""
    file = display_path(path)
    if len(text) > MAX_FILE_BYTES:
        raise ManifestError(f"larger than {MAX_FILE_BYTES} bytes: not a manifest", file=file)
    docs = []
    loader = _Loader(text, file)
    budget = MAX_VALUES
    try:
        i = 0
        while loader.check_node():
            node = loader.get_node()
            if node is not None:
                budget -= _check_expansion(node, file, budget)
                data = _convert(node, file, loader.construct_object)
                docs.append(Doc(file, os.path.abspath(path), i, node.start_mark.line + 1, data))
            i += 1
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or str(exc)
        raise ManifestError(f"YAML syntax error: {problem}", file=file, line=line) from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"YAML error: {exc}", file=file) from None
    finally:
        loader.dispose()
    return docs


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
