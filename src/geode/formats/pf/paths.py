"""Path normalisation as Gramine applies it before binding a path into a protected file."""

from __future__ import annotations


def norm_path(path: str) -> str:
    """Normalise ``path`` lexically, as Gramine's ``get_norm_path`` does.

    Empty and ``.`` components are dropped and ``..`` removes the previous component. An
    absolute path cannot go above ``/``; a relative path keeps leading ``..`` components. A
    trailing ``/`` is dropped. Examples: ``./out//sub/../x.pf`` -> ``out/x.pf``,
    ``//data/./f/`` -> ``/data/f``, ``a/../../b`` -> ``../b``, ``.`` -> ``""``.
    """
    absolute = path.startswith("/")
    ups = 0
    parts: list[str] = []
    for token in path.split("/"):
        if token in ("", "."):
            continue
        if token == "..":
            if parts:
                parts.pop()
            elif not absolute:
                ups += 1
            continue
        parts.append(token)
    joined = "/".join([".."] * ups + parts)
    return "/" + joined if absolute else joined
