"""The one Jinja2 environment of manifests and template steps: sandboxed, strict, bounded.

A manifest may come from a pull request, so its templates are untrusted: they can format
values, never reach Python. ``ImmutableSandboxedEnvironment`` refuses attributes that start
with ``_`` (``__globals__``, ``__subclasses__``, ...) and methods that mutate lists and dicts;
on top of it this environment keeps no global that leads to a module (``lipsum``, ``cycler``,
``joiner``, ``namespace`` are gone) and bounds the obvious multipliers: ``*``, ``**``, ``%``,
``+``, widths given to filters and methods, ``range``, call arguments and the rendered output.
A template can still burn CPU in nested loops: run ``orch plan`` on untrusted input under a
job timeout (README, Security).
"""
from __future__ import annotations

import re
from typing import Any, Iterator, Mapping

import jinja2
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

MAX_OUTPUT = 1 << 20          # characters one template may render (a file of a template step)
MAX_SIZE = 1 << 20            # characters or items of any value an operator or call produces
MAX_WIDTH = 1 << 16           # an integer handed to a filter or call (widths, counts)
MAX_INT_BITS = 4096           # integers made by ** and *
MAX_RANGE = 100_000           # items of range()
MAX_TEMPLATE = 1 << 20        # characters of template source

_PERCENT_WIDTH = re.compile(r"%(?:\([^)]*\))?[#0 +\-]*(\d*)(?:\.(\d*))?")
_BRACE_WIDTH = re.compile(r"\{[^{}]*?:[^{}]*?(\d+)")


class TemplateLimit(SecurityError):
    """A template asked for more than the limits above."""


def _check_size(value: Any, what: str) -> Any:
    if isinstance(value, (str, list, tuple, dict, set, frozenset)) and len(value) > MAX_SIZE:
        raise TemplateLimit(f"{what} would exceed {MAX_SIZE} characters or items")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise TemplateLimit(f"{what} would exceed {MAX_INT_BITS}-bit integers")
    return value


def _check_argument(value: Any, what: str) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_WIDTH:
        raise TemplateLimit(f"{what}: argument {value} is larger than {MAX_WIDTH}")
    _check_size(value, what)


def _check_format(text: str, what: str) -> None:
    """Widths and precisions written in a %-format or str.format string."""
    numbers = [n for m in _PERCENT_WIDTH.finditer(text) for n in m.groups() if n]
    numbers += _BRACE_WIDTH.findall(text)
    if any(len(n) > 6 or int(n) > MAX_WIDTH for n in numbers):
        raise TemplateLimit(f"{what}: a format width larger than {MAX_WIDTH}")


def _length(value: Any) -> int:
    return len(value) if isinstance(value, (str, list, tuple)) else 0


def _check_product(receiver: Any, args: tuple, what: str) -> None:
    """A string method or filter given strings (``replace``) may multiply their lengths."""
    if isinstance(receiver, str):
        grow = 1 + sum(_length(a) for a in args)
        if (len(receiver) + 1) * grow > 16 * MAX_SIZE:
            raise TemplateLimit(f"{what} would exceed {MAX_SIZE} characters")


def bounded_range(*args: int) -> range:
    for a in args:
        _check_argument(a, "range()")
    rng = range(*args)
    if len(rng) > MAX_RANGE:
        raise TemplateLimit(f"range() of {len(rng)} items; at most {MAX_RANGE}")
    return rng


def _bounded_filter(name: str, fn):
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        rest = list(args)
        if rest and isinstance(rest[0], (Context, EvalContext, jinja2.Environment)):
            rest = rest[1:]                      # pass_context / pass_environment filters
        value, params = (rest[0], rest[1:] + list(kwargs.values())) if rest else (None, [])
        for a in params:
            _check_argument(a, f'filter "{name}"')
        if isinstance(value, str):
            _check_product(value, tuple(params), f'filter "{name}"')
            if name == "format":
                _check_format(value, 'filter "format"')
        return _check_size(fn(*args, **kwargs), f'filter "{name}"')

    if hasattr(fn, "jinja_pass_arg"):         # keeps jinja's pass_context/pass_environment mark
        wrapper.jinja_pass_arg = fn.jinja_pass_arg  # type: ignore[attr-defined]
    wrapper.__name__ = getattr(fn, "__name__", name)
    return wrapper


class BoundedSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self) -> None:
        super().__init__(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
        for name in ("lipsum", "cycler", "joiner", "namespace"):
            self.globals.pop(name, None)
        self.globals["range"] = bounded_range
        self.filters = {name: _bounded_filter(name, fn) for name, fn in self.filters.items()}

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        what = f'"{operator}"'
        if operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0:
            if abs(left) > 1 and right * left.bit_length() > MAX_INT_BITS:
                raise TemplateLimit(f"{what} would exceed {MAX_INT_BITS}-bit integers")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(n, int) and _length(seq) * max(n, 0) > MAX_SIZE:
                    raise TemplateLimit(f"{what} would exceed {MAX_SIZE} characters or items")
        if operator == "%" and isinstance(left, str):
            _check_format(left, what)
            for a in right if isinstance(right, tuple) else (right,):
                _check_argument(a, what)
        if operator == "+" and _length(left) + _length(right) > MAX_SIZE:
            raise TemplateLimit(f"{what} would exceed {MAX_SIZE} characters or items")
        return _check_size(super().call_binop(context, operator, left, right), what)

    def call(__self, __context, __obj, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        what = f"calling {getattr(__obj, '__name__', type(__obj).__name__)}()"
        for a in list(args) + list(kwargs.values()):
            _check_argument(a, what)
        _check_product(getattr(__obj, "__self__", None), args, what)
        return _check_size(super().call(__context, __obj, *args, **kwargs), what)

    def wrap_str_format(self, value: Any):
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        _check_format(value.__self__, "str.format")
        return wrapped


def make_jinja() -> jinja2.Environment:
    """The one Jinja2 environment for manifests and template steps (sandboxed, StrictUndefined)."""
    return BoundedSandbox()


def _bounded_output(chunks: Iterator[str]) -> str:
    out, size = [], 0
    for chunk in chunks:
        size += len(chunk)
        if size > MAX_OUTPUT:
            raise TemplateLimit(f"output would exceed {MAX_OUTPUT} characters")
        out.append(chunk)
    return "".join(out)


def render_text(env: jinja2.Environment, text: str, variables: Mapping[str, Any]) -> str:
    """Render one template string; raises ValueError with a readable reason (never anything
    else: a template's own failure, a refused attribute and a limit all become one line)."""
    if len(text) > MAX_TEMPLATE:
        raise ValueError(f"template larger than {MAX_TEMPLATE} characters")
    try:
        return _bounded_output(env.from_string(text).generate(**variables))
    except jinja2.UndefinedError as exc:
        raise ValueError(f"undefined variable: {exc.message}") from None
    except SecurityError as exc:
        raise ValueError(f"refused by the template sandbox: {exc}") from None
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(f"template syntax error (line {exc.lineno}): {exc.message}") from None
    except jinja2.TemplateError as exc:
        raise ValueError(f"template error: {exc}") from None
    except RecursionError:
        raise ValueError("template error: recursion too deep") from None
    except MemoryError:
        raise ValueError("template error: out of memory") from None
    except Exception as exc:  # the template's own fault (1/0, "a" + 1, ...): report, never a traceback
        raise ValueError(f"template error: {type(exc).__name__}: {exc}") from None
