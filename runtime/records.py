"""Frozen value records: ``@record`` is ``@dataclass(frozen=True)`` whose methods come from one
base class, ``Record``, instead of being generated.

A dataclass compiles each method it generates when its module is imported (``__init__``,
``__setattr__`` and ``__delattr__`` of a frozen one, ``__eq__``, ``__hash__`` and ``__repr__``:
0.5-1 ms a class); the manifest model, the deploy spec and the planners are ~50 classes that
every ``orch`` command imports, and that was a third of its imports. Here ``dataclass`` only
collects the fields (``fields``, ``replace`` and ``asdict`` work as ever) and generates
nothing. The methods mean what the generated ones mean: ``__init__`` takes the fields in
order, by position or name, with their defaults and default factories, then calls
``__post_init__``; setting or deleting an attribute raises ``FrozenInstanceError``; equal when
the class is the same and the fields that compare are equal, the hash of those fields, and
``Name(field=value, ...)`` of the fields that show. An instance takes a few microseconds more
to make than a generated ``__init__`` would. ``@mutable`` is the same for a plain (mutable)
``@dataclass``: equal by its fields, unhashable, attributes may be set.

Stdlib only (the agent imports it too).
"""
from __future__ import annotations

from dataclasses import MISSING, FrozenInstanceError, dataclass, fields
from typing import Any, Callable, Dict, Tuple, Type, TypeVar

T = TypeVar("T")

_NAMES: Dict[Type, Tuple[Tuple[str, ...], Tuple[str, ...], Tuple[str, ...]]] = {}
# class -> (init field names in order, {name: default}, {name: factory}, has __post_init__)
_INITS: Dict[Type, Tuple[Tuple[str, ...], Dict[str, Any], Dict[str, Callable[[], Any]], bool]] = {}


def _init_plan(cls: Type):
    got = _INITS.get(cls)
    if got is None:
        fs = [f for f in fields(cls) if f.init]
        got = (tuple(f.name for f in fs),
               {f.name: f.default for f in fs if f.default is not MISSING},
               {f.name: f.default_factory for f in fs if f.default_factory is not MISSING},
               hasattr(cls, "__post_init__"))
        _INITS[cls] = got
    return got


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


class _Fields:
    """What records and mutables share: ``__init__``, ``__eq__`` and ``__repr__`` from the
    class's fields."""
    __slots__ = ()

    def __init__(self, *args: Any, **kw: Any) -> None:
        cls = self.__class__
        names, defaults, factories, post_init = _INITS.get(cls) or _init_plan(cls)
        if len(args) > len(names):
            raise TypeError(f"{cls.__qualname__}() takes {len(names)} positional arguments "
                            f"but {len(args)} were given")
        put = object.__setattr__ if isinstance(self, Record) else setattr
        for name, value in zip(names, args):
            if name in kw:
                raise TypeError(f"{cls.__qualname__}() got multiple values for argument {name!r}")
            put(self, name, value)
        missing = []
        for name in names[len(args):]:
            if name in kw:
                put(self, name, kw.pop(name))
            elif name in defaults:
                put(self, name, defaults[name])
            elif name in factories:
                put(self, name, factories[name]())
            else:
                missing.append(name)
        if kw:
            raise TypeError(f"{cls.__qualname__}() got an unexpected keyword argument "
                            f"{next(iter(kw))!r}")
        if missing:
            raise TypeError(f"{cls.__qualname__}() missing required argument(s): "
                            f"{', '.join(map(repr, missing))}")
        if post_init:
            self.__post_init__()

    def __eq__(self, other: Any) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        names = _names(self.__class__)[0]     # tuples, as a dataclass compares (NaN is itself)
        return tuple(getattr(self, n) for n in names) == tuple(getattr(other, n) for n in names)

    def __repr__(self) -> str:
        shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in _names(self.__class__)[2])
        return f"{self.__class__.__qualname__}({shown})"


class Record(_Fields):
    """The base of every ``@record`` class (see the module's docstring): frozen, hashable."""
    __slots__ = ()

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, n) for n in _names(self.__class__)[1]))

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")


class Mutable(_Fields):
    """The base of every ``@mutable`` class: ``@dataclass`` (mutable, unhashable, equal by its
    fields) without generated code, as ``@record`` is for frozen ones."""
    __slots__ = ()
    __hash__ = None     # type: ignore[assignment]


def _made(cls: Type[T], base: type, name: str) -> Type[T]:
    """``cls`` as a dataclass with ``base``'s methods, or a TypeError now for what the shared
    ``__init__`` does not make as a dataclass would (InitVar, keyword-only or ``init=False``
    fields) and what a dataclass refuses (a field without a default after one with one)."""
    if not issubclass(cls, base):
        raise TypeError(f"{cls.__qualname__}: a @{name} class derives from {base.__name__}")
    if not cls.__doc__:     # else dataclass works one out from the signature (inspect: slow)
        cls.__doc__ = cls.__qualname__
    cls = dataclass(init=False, eq=False, repr=False)(cls)
    real = {x.name for x in fields(cls)}                # not ClassVars (nor InitVars)
    defaulted = None
    for f in cls.__dataclass_fields__.values():
        if "InitVar" in str(f.type) or f.type.__class__.__name__ == "InitVar":
            raise TypeError(f"{cls.__qualname__}.{f.name}: an InitVar (not made by this __init__)")
        if f.name not in real:
            continue                                    # a ClassVar
        if not f.init or getattr(f, "kw_only", False) is True:
            raise TypeError(f"{cls.__qualname__}.{f.name}: init=False and kw_only fields are not "
                            "made by this __init__")
        if f.default is not MISSING or f.default_factory is not MISSING:
            defaulted = f.name
        elif defaulted:
            raise TypeError(f"{cls.__qualname__}: non-default argument {f.name!r} follows default "
                            f"argument {defaulted!r}")
    return cls


def record(cls: Type[T]) -> Type[T]:
    """``@record class X(Record): ...``: a frozen dataclass with Record's methods."""
    if "__eq__" in cls.__dict__ and cls.__dict__.get("__hash__") is None:
        cls.__hash__ = Record.__hash__      # a frozen dataclass hashes its fields all the same
    return _made(cls, Record, "record")


def mutable(cls: Type[T]) -> Type[T]:
    """``@mutable class X(Mutable): ...``: a (mutable) dataclass with Mutable's methods."""
    return _made(cls, Mutable, "mutable")
