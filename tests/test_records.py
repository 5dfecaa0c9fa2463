"""geode.records.Record behaves as typing.NamedTuple for every use Geode makes of records."""

from __future__ import annotations

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
