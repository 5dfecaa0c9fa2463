"""geode.records.Record behaves as typing.NamedTuple for every use Geode makes of records."""

from __future__ import annotations

import copy
import pickle
from typing import Any, NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geode.records import Record

# One class body, declared through typing.NamedTuple and through Record (in this module's
# namespace, so that instances pickle like any module-level class).
_BODY = '''
class {name}({base}):
    """A point."""

    x: int
    y: int = 0
    label: str = "p"

    def norm(self) -> int:
        return abs(self.x) + abs(self.y)

    @property
    def swapped(self) -> tuple[int, int]:
        return self.y, self.x

    @classmethod
    def origin(cls):
        return cls(0)

    @staticmethod
    def unit() -> int:
        return 1

    def __repr__(self) -> str:
        return f"<{{self.x}},{{self.y}}>"
'''
_classes: dict[str, Any] = {"__name__": __name__, "NamedTuple": NamedTuple, "Record": Record}
exec(compile("from __future__ import annotations\n"
             + _BODY.format(name="TypedPoint", base="NamedTuple")
             + _BODY.format(name="Point", base="Record"), __file__, "exec"), _classes)
TypedPoint, Point = _classes["TypedPoint"], _classes["Point"]


class Plain(Record):
    a: int
    b: bytes


class TypedPlain(NamedTuple):
    a: int
    b: bytes


def test_the_class_is_what_typing_makes() -> None:
    assert Point._fields == TypedPoint._fields == ("x", "y", "label")
    assert Point._field_defaults == TypedPoint._field_defaults
    assert list(Point.__annotations__) == list(TypedPoint.__annotations__)
    assert Point.__doc__ == TypedPoint.__doc__ == "A point."
    assert Point.__qualname__ == "Point" and Point.__module__ == __name__
    assert Point.__bases__ == TypedPoint.__bases__ == (tuple,)
    assert Plain.__doc__ == TypedPlain.__doc__.replace("TypedPlain", "Plain")
    assert repr(Plain(1, b"x")) == "Plain(a=1, b=b'x')"


@given(st.integers(), st.integers(), st.text(max_size=5))
def test_instances_behave_alike(x: int, y: int, label: str) -> None:
    p, t = Point(x, y, label), TypedPoint(x, y, label)
    assert tuple(p) == tuple(t) and p == t and hash(p) == hash(t)
    assert repr(p) == repr(t)
    assert p.norm() == t.norm() and p.swapped == t.swapped
    assert p._replace(x=y) == t._replace(x=y)
    assert p._asdict() == t._asdict()
    assert Point._make([x, y, label]) == TypedPoint._make([x, y, label])
    assert Point(x) == TypedPoint(x) and Point(x).label == "p"
    assert Point.origin() == (0, 0, "p") and isinstance(Point.origin(), Point)
    assert Point.unit() == 1 and isinstance(p, tuple)
    assert pickle.loads(pickle.dumps(p)) == p
    first, *_ = p
    assert first == x


def test_what_typing_refuses_is_refused() -> None:
    with pytest.raises(TypeError, match="Non-default"):
        class Bad(Record):
            a: int = 0
            b: int

    with pytest.raises(AttributeError, match="_replace"):
        class Clash(Record):
            a: int

            def _replace(self) -> None:  # type: ignore[override]
                pass

    with pytest.raises(TypeError):
        class Mixed(Record, dict):  # type: ignore[misc]
            a: int


_SHAPES = ["", "a: int", "a: int = 1", "a: int\n    b: str", "a: int\n    b: str = 'x'",
           "a: int = 0\n    b: str = 'x'\n    c: bytes = b''"]


def _both(body: str) -> tuple[Any, Any]:
    """The class declared with ``body`` through typing.NamedTuple (T) and Record (R)."""
    ns: dict[str, Any] = {"__name__": __name__, "NamedTuple": NamedTuple, "Record": Record}
    code = "".join(f"class {n}({base}):\n    {body or 'pass'}\n"
                   for n, base in (("T", "NamedTuple"), ("R", "Record")))
    exec(compile(code, __file__, "exec"), ns)
    return ns["T"], ns["R"]


@pytest.mark.parametrize("body", _SHAPES)
def test_constructors_are_namedtuples_own(body: str) -> None:
    """The constructor Record builds (namedtuple's, compiled once per number of fields)
    binds arguments and fails exactly as namedtuple's: same defaults, same messages."""
    typed, record = _both(body)
    assert record._fields == typed._fields and record.__match_args__ == typed.__match_args__
    assert record._field_defaults == typed._field_defaults
    assert record.__new__.__defaults__ == typed.__new__.__defaults__
    assert record.__doc__ == typed.__doc__.replace("T(", "R(")
    assert record.__new__.__doc__ == typed.__new__.__doc__.replace(" T(", " R(")
    n = len(typed._fields)
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((), {}), (tuple(range(n)), {}), (tuple(range(n + 1)), {}), ((), {"zz": 1}),
        ((1,), {"a": 2}), ((), {"a": 5}), ((), {"b": "y"}), ((), dict.fromkeys(typed._fields, 7)),
    ]
    for args, kwargs in calls:
        outcomes = []
        for cls in (typed, record):
            try:
                outcomes.append(tuple(cls(*args, **kwargs)))
            except TypeError as e:
                outcomes.append(str(e).replace(f"{cls.__name__}.", "X."))
        assert outcomes[0] == outcomes[1], (args, kwargs)
    r = record(*range(n))
    assert record._make(range(n)) == r and copy.copy(r) == r and copy.deepcopy(r) == r
    assert r.__getnewargs__() == tuple(r) and type(copy.copy(r)) is record
    with pytest.raises(TypeError, match=f"Expected {n} arguments, got {n + 1}"):
        record._make(range(n + 1))
    with pytest.raises(ValueError, match="unexpected field names"):
        r._replace(zz=1)


def test_fields_starting_with_an_underscore_are_refused_as_by_typing() -> None:
    for base in ("NamedTuple", "Record"):
        with pytest.raises(ValueError, match="underscore"):
            _both_one(base, "_a: int")


def _both_one(base: str, body: str) -> Any:
    ns: dict[str, Any] = {"__name__": __name__, "NamedTuple": NamedTuple, "Record": Record}
    exec(compile(f"class C({base}):\n    {body}\n", __file__, "exec"), ns)
    return ns["C"]
