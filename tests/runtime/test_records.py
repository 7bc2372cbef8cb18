"""@record means what @dataclass(frozen=True) means: equality, hash, repr, immutability,
replace/asdict, defaults, fields left out of comparison or repr, inheritance."""
import dataclasses
from dataclasses import dataclass, field
from typing import Tuple

import pytest
from hypothesis import given, strategies as st

from runtime.records import Mutable, Record, mutable, record


@record
class Point(Record):
    x: int
    y: int = 0
    note: str = field(default="", compare=False)
    secret: str = field(default="", repr=False)
    tags: Tuple[str, ...] = ()


@dataclass(frozen=True)
class DPoint:
    x: int
    y: int = 0
    note: str = field(default="", compare=False)
    secret: str = field(default="", repr=False)
    tags: Tuple[str, ...] = ()


@record
class Point3(Point):
    z: int = 0


@given(st.integers(), st.integers(), st.text(max_size=5), st.text(max_size=5),
       st.integers(), st.integers(), st.text(max_size=5))
def test_a_record_compares_hashes_and_shows_as_the_frozen_dataclass_does(x, y, note, secret, x2, y2, note2):
    a, b = Point(x, y, note, secret), Point(x2, y2, note2, secret)
    da, db = DPoint(x, y, note, secret), DPoint(x2, y2, note2, secret)
    assert (a == b) == (da == db) and (a != b) == (da != db)
    assert hash(a) == hash(da) and hash(b) == hash(db)
    assert repr(a) == repr(da).replace("DPoint", "Point")


def test_a_record_is_frozen_and_works_with_replace_asdict_and_sets():
    p = Point(1, 2, tags=("a",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.x = 3
    assert dataclasses.replace(p, y=5) == Point(1, 5, tags=("a",))
    assert dataclasses.asdict(p) == {"x": 1, "y": 2, "note": "", "secret": "", "tags": ("a",)}
    assert len({p, Point(1, 2, note="other", tags=("a",)), Point(1, 3)}) == 2
    assert p != (1, 2) and p.__eq__((1, 2)) is NotImplemented


def test_a_subclass_compares_its_own_fields_and_never_equals_its_base():
    assert Point3(1, 2, z=3) == Point3(1, 2, z=3) != Point3(1, 2, z=4)
    assert Point3(1, 2) != Point(1, 2)
    assert repr(Point3(1, z=3)) == "Point3(x=1, y=0, note='', tags=(), z=3)"


def test_a_record_must_derive_from_record():
    with pytest.raises(TypeError, match="derives from Record"):
        @record
        class Loose:
            x: int


@record
class Made(Record):
    """A record with a default factory and a __post_init__ that checks."""
    name: str
    items: Tuple[str, ...] = field(default_factory=tuple)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.name:
            raise ValueError("name is empty")


def test_a_record_is_made_as_a_dataclass_is_by_position_name_default_and_factory():
    assert Point(1) == Point(x=1) and repr(Point(1)) == repr(DPoint(1)).replace("DPoint", "Point")
    assert (Point(1, 2, "n", "s", ("t",)).tags, Point(y=2, x=1).y) == (("t",), 2)
    a, b = Made("a"), Made("b")
    assert a.items == () and a.extra == {} and a.extra is not b.extra   # a fresh one each
    with pytest.raises(ValueError, match="name is empty"):
        Made("")                                                         # __post_init__ ran
    for bad in (lambda: Point(), lambda: Point(1, x=2), lambda: Point(1, 2, "", "", (), 9),
                lambda: Point(1, nope=3)):
        with pytest.raises(TypeError):
            bad()
    for bad in (lambda: DPoint(), lambda: DPoint(1, x=2), lambda: DPoint(1, 2, "", "", (), 9),
                lambda: DPoint(1, nope=3)):
        with pytest.raises(TypeError):
            bad()
    with pytest.raises(dataclasses.FrozenInstanceError):
        del Point(1).x


@mutable
class Tally(Mutable):
    name: str
    counts: dict = field(default_factory=dict)
    note: str = field(default="", compare=False)


@dataclass
class DTally:
    name: str
    counts: dict = field(default_factory=dict)
    note: str = field(default="", compare=False)


def test_a_mutable_is_a_plain_dataclass_equal_by_its_fields_and_unhashable():
    a, b = Tally("a"), Tally("a", note="other")
    assert a == b and a.counts is not b.counts and repr(a) == repr(DTally("a")).replace("DTally", "Tally")
    a.counts["x"] = 1
    a.name = "renamed"
    assert a != b and (a.name, a.counts) == ("renamed", {"x": 1})
    with pytest.raises(TypeError):
        hash(a)
    with pytest.raises(TypeError):
        hash(DTally("a"))
    assert dataclasses.replace(a, note="n") == a and dataclasses.asdict(b)["counts"] == {}
    with pytest.raises(TypeError, match="derives from Mutable"):
        @mutable
        class Loose:
            x: int


def test_what_the_shared_init_does_not_make_is_refused_when_the_class_is_made():
    from dataclasses import InitVar
    from typing import ClassVar
    with pytest.raises(TypeError, match="follows default"):
        @record
        class Order(Record):
            a: int = 0
            b: int
    with pytest.raises(TypeError, match="init=False"):
        @record
        class Hidden(Record):
            a: int
            b: int = field(default=0, init=False)
    with pytest.raises(TypeError, match="InitVar"):
        @record
        class WithInitVar(Record):
            a: InitVar[int]

    @record
    class Counted(Record):
        a: int
        made: ClassVar[int] = 0          # a ClassVar is no field, as for a dataclass

    assert Counted(1).a == 1 and [f.name for f in dataclasses.fields(Counted)] == ["a"]


def test_a_record_with_its_own_eq_still_hashes_and_a_mutable_sets_through_its_setattr():
    @record
    class Loose(Record):
        a: int

        def __eq__(self, other):
            return isinstance(other, Loose) and self.a % 10 == other.a % 10

    assert hash(Loose(1)) == hash(Loose(1)) and Loose(1) == Loose(11)

    @mutable
    class Seen(Mutable):
        a: int

        def __setattr__(self, name, value):
            object.__setattr__(self, name, value * 2)

    assert Seen(2).a == 4
