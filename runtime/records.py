"""Frozen value records: ``@record`` is ``@dataclass(frozen=True)`` whose ``__eq__``,
``__hash__`` and ``__repr__`` come from one base class, ``Record``, instead of being generated.

A dataclass compiles each method it generates when its module is imported (six for a frozen
one, ~0.8 ms a class); the manifest model, the deploy spec and the planners are ~50 classes
that every ``orch`` command imports. Generated or not, the methods mean the same: equal when
the class is the same and the fields that compare are equal, the hash of those fields, and
``Name(field=value, ...)`` of the fields that show.

Stdlib only (the agent imports it too).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Dict, Tuple, Type, TypeVar

T = TypeVar("T")

_NAMES: Dict[Type, Tuple[Tuple[str, ...], Tuple[str, ...], Tuple[str, ...]]] = {}


def _names(cls: Type) -> Tuple[Tuple[str, ...], Tuple[str, ...], Tuple[str, ...]]:
    """(fields that compare, that hash, that show) of a record class, worked out once."""
    got = _NAMES.get(cls)
    if got is None:
        fs = fields(cls)
        got = (tuple(f.name for f in fs if f.compare),
               tuple(f.name for f in fs if (f.compare if f.hash is None else f.hash)),
               tuple(f.name for f in fs if f.repr))
        _NAMES[cls] = got
    return got


class Record:
    """The base of every ``@record`` class (see the module's docstring)."""
    __slots__ = ()

    def __eq__(self, other: Any) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        names = _names(self.__class__)[0]     # tuples, as a dataclass compares (NaN is itself)
        return tuple(getattr(self, n) for n in names) == tuple(getattr(other, n) for n in names)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, n) for n in _names(self.__class__)[1]))

    def __repr__(self) -> str:
        shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in _names(self.__class__)[2])
        return f"{self.__class__.__qualname__}({shown})"


def record(cls: Type[T]) -> Type[T]:
    """``@record class X(Record): ...``: a frozen dataclass with Record's eq, hash and repr."""
    if not issubclass(cls, Record):
        raise TypeError(f"{cls.__qualname__}: a @record class derives from Record")
    return dataclass(frozen=True, eq=False, repr=False)(cls)
