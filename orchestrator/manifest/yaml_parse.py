"""The YAML parser proper: text -> the documents' trees (``LMap``/``LList``/``YInt``/scalars),
refusing what no manifest needs while it composes. Only ``source.parse_documents`` calls it,
on a text whose parse is not cached (``parse_cache``): a command whose manifests did not change
does not import yaml (~15-20 ms).
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import yaml

from orchestrator.errors import ManifestError
from orchestrator.manifest.source import MAX_DEPTH, MAX_INT_DIGITS, MAX_SCALAR, MAX_VALUES, LList, LMap, YInt

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
        if node.tag == _INT_TAG and _int_digits(node.value) > MAX_INT_DIGITS:
            raise self.refuse(f"an integer with more than {MAX_INT_DIGITS} digits", node.start_mark)
        return node


def _int_digits(text: str) -> int:
    """The digits of a YAML integer in any base (0x ff, 0o 17, 0b 101 count each digit)."""
    body = text.lstrip("+-")
    if body[:2].lower() in ("0x", "0o", "0b"):
        body = body[2:]
    return sum(c.isalnum() for c in body)


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


def parse(text: str, file: str) -> List[Tuple[int, int, Any]]:
    """(index, first line, tree) of each non-empty document of ``text``; ``file`` names it in
    errors. A syntax error or a file beyond the limits is a located ``ManifestError``."""
    out = []
    loader = _Loader(text, file)
    budget = MAX_VALUES
    try:
        i = 0
        while loader.check_node():
            node = loader.get_node()
            if node is not None:
                budget -= _check_expansion(node, file, budget)
                out.append((i, node.start_mark.line + 1, _convert(node, file, loader.construct_object)))
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
    return out
