"""``Record``: ``typing.NamedTuple``'s class syntax, without importing ``typing`` at run time.

A start of ``geode run`` imports ~20 modules that declare records. ``typing`` took ~4 ms of
every start to import and its ``NamedTuple`` machinery ~0.25 ms per class, against ~0.1 ms for
the ``collections.namedtuple`` it builds on. Type checkers see ``typing.NamedTuple`` itself;
at run time ::

    class Point(Record):
        x: int
        y: int = 0

        def norm(self) -> int: ...

is ``collections.namedtuple("Point", ["x", "y"], defaults=[0])`` with the class body's
methods, properties, docstring, qualified name and (unevaluated) annotations set on it,
which is what ``typing.NamedTuple`` does; the same names are refused.
``tests/test_records.py`` compares the two.

Modules on the run path also import ``typing``'s other names only for type checkers::

    TYPE_CHECKING = False
    if TYPE_CHECKING:
        from typing import Any

(type checkers take a name ``TYPE_CHECKING`` as true; every module uses
``from __future__ import annotations``, so annotations are never evaluated).
"""

from __future__ import annotations

import collections

__all__ = ["Record"]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NamedTuple as Record
else:
    # As typing.NamedTupleMeta (Python 3.11): names a record may not define, and names of
    # the class body that are not copied onto the tuple class.
    _PROHIBITED = frozenset({"__new__", "__init__", "__slots__", "__getnewargs__", "_fields",
                             "_field_defaults", "_make", "_replace", "_asdict", "_source"})
    _SPECIAL = frozenset({"__module__", "__name__", "__annotations__"})

    class _RecordMeta(type):
        def __new__(mcls, name: str, bases: tuple[type, ...], ns: dict[str, object]) -> type:
            if ns.get("_record_base", False):
                return super().__new__(mcls, name, bases, ns)
            if bases != (Record,):
                raise TypeError("a Record inherits from Record alone")
            annotations = ns.get("__annotations__", {})
            assert isinstance(annotations, dict)
            defaults = []
            for field in annotations:
                if field in ns:
                    defaults.append(ns[field])
                elif defaults:
                    raise TypeError(f"Non-default namedtuple field {field} cannot follow "
                                    "default field(s)")
            record = collections.namedtuple(name, list(annotations), defaults=defaults,
                                            module=str(ns["__module__"]))
            record.__annotations__ = record.__new__.__annotations__ = dict(annotations)
            for key, value in ns.items():
                if key in _PROHIBITED:
                    raise AttributeError("Cannot overwrite NamedTuple attribute " + key)
                if key not in _SPECIAL and key not in record._fields:
                    setattr(record, key, value)
            return record

    class Record(metaclass=_RecordMeta):
        _record_base = True
