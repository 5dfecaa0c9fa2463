"""Rendering manifest templates (gramine-manifest's Jinja2 step) and parsing the result.

The environment matches Gramine's ``gen_jinja_env.py``: Jinja2 with ``StrictUndefined``,
autoescape off, ``keep_trailing_newline=True``, and these globals:

* ``gramine.libos`` (the Geode runtime identity file, Gramine's ``libsysdb.so``),
  ``gramine.pkglibdir``, ``gramine.runtimedir(libc='glibc')`` (also usable as
  ``{{ gramine.runtimedir }}`` and ``gramine.runtimedir / 'x'``), all ``pathlib.Path``;
* ``python.stdlib/platstdlib/purelib/distlib`` (paths), ``python.get_path``,
  ``python.get_paths``, ``python.get_config_var`` (sysconfig), ``python.ext_suffix``,
  ``python.implementation`` (``sys.implementation``) and
  ``python.get_sys_path(interpreter, include_nonexisting=False)``, the existing entries
  of ``sys.path`` of that interpreter;
* ``env`` (``os.environ``), ``ldd(*binaries)`` (sorted, unique library paths), ``libc``
  (``'glibc'``, as in Gramine; a ``-D libc=...`` overrides it);
* the ``-D`` defines, which override globals of the same name.

Every error is a :class:`~geode.errors.ManifestError` whose location is
``TEMPLATE:LINE`` (syntax errors, undefined variables, errors raised by the globals).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import jinja2

from geode.errors import ManifestError
from geode.manifest import runtimedir as _rt
from geode.manifest import tomlio

# --------------------------------------------------------------------------- globals


class Runtimedir:
    """``gramine.runtimedir``: call it (``runtimedir('musl')``) or use it as a path."""

    def __call__(self, libc: str = "glibc") -> Path:
        return _rt.runtimedir(libc).resolve()

    def __str__(self) -> str:
        return str(self())

    def __fspath__(self) -> str:
        return str(self())

    def __truediv__(self, other: str | os.PathLike[str]) -> Path:
        return self() / other


class GramineNamespace:
    """``gramine.*``; values are computed when first used (``libos`` writes a file)."""

    runtimedir = Runtimedir()

    @property
    def libos(self) -> Path:
        from geode.measurement import libos_path

        return libos_path()

    @property
    def pkglibdir(self) -> Path:
        return _rt.pkglibdir()

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None


def python_get_sys_path(
    interpreter: str | os.PathLike[str], include_nonexisting: bool = False
) -> list[Path]:
    """The non-empty ``sys.path`` entries of ``interpreter`` (existing ones, by default)."""
    code = (
        "import os, sys; "
        "sys.stdout.buffer.write(b'\\0'.join(os.fsencode(p) for p in sys.path if p))"
    )
    name = os.fspath(interpreter)
    try:
        proc = subprocess.run([name, "-c", code], capture_output=True,
                              stdin=subprocess.DEVNULL, check=False)
    except OSError as e:
        raise ManifestError(f"python.get_sys_path({name!r}): cannot run it: {e.strerror}") \
            from None
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip().splitlines()
        raise ManifestError(
            f"python.get_sys_path({name!r}): exited with status {proc.returncode}"
            + (f": {detail[-1]}" if detail else "")
        )
    paths = [Path(os.fsdecode(p)) for p in proc.stdout.split(b"\0") if p]
    return paths if include_nonexisting else [p for p in paths if p.exists()]


def _python_namespace() -> dict[str, Any]:
    paths = sysconfig.get_paths()
    return {
        "stdlib": Path(paths["stdlib"]),
        "platstdlib": Path(paths["platstdlib"]),
        "purelib": Path(paths["purelib"]),
        # Debian's dist-packages beside the major-version stdlib (Gramine's definition)
        "distlib": Path(sysconfig.get_path("stdlib",
                                           vars={"py_version_short": sys.version_info[0]}))
        / "dist-packages",
        "get_config_var": sysconfig.get_config_var,
        "ext_suffix": sysconfig.get_config_var("EXT_SUFFIX"),
        "get_path": sysconfig.get_path,
        "get_paths": sysconfig.get_paths,
        "implementation": sys.implementation,
        "get_sys_path": python_get_sys_path,
    }


def ldd(*binaries: str | os.PathLike[str]) -> list[str]:
    """Sorted, unique absolute paths of the shared libraries each binary loads.

    Like Gramine's, this runs the host's ``ldd`` and keeps ``name => /path`` targets and
    the loader's own ``/path`` line (not vdso, not libraries reported "not found"). A
    missing file, a non-ELF file or a classic static binary (Gramine's ``ldd`` call
    fails on those) is an error naming it; a static-pie binary has no libraries.
    """
    found: set[str] = set()
    for binary in binaries:
        found.update(_ldd_one(os.fspath(binary)))
    return sorted(found)


def _ldd_one(path: str) -> set[str]:
    if not os.path.exists(path):
        raise ManifestError(f"ldd({path!r}): no such file")
    try:
        _interp, dynamic = _rt.elf_dynamic_info(Path(path))
    except ValueError:
        raise ManifestError(f"ldd({path!r}): not an ELF binary (not a dynamic executable)") \
            from None
    except OSError as e:
        raise ManifestError(f"ldd({path!r}): cannot read it: {e.strerror}") from None
    if not dynamic:
        raise ManifestError(
            f"ldd({path!r}): statically linked, not a dynamic executable "
            "(it loads no libraries; trust the binary itself)"
        )
    tool = shutil.which("ldd")
    if tool is not None:
        cmd = [tool, path]
    else:  # no ldd script (e.g. a minimal image): ask a loader directly
        interp = _interp or _rt.elf_interpreter(Path(sys.executable)) or "/lib64/ld.so"
        cmd = [interp, "--list", path]
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env["LC_ALL"] = "C"
    try:
        proc = subprocess.run(cmd, capture_output=True, env=env, stdin=subprocess.DEVNULL,
                              check=False)
    except OSError as e:
        raise ManifestError(f"ldd({path!r}): cannot run {cmd[0]}: {e.strerror}") from None
    out = proc.stdout.decode("utf-8", "surrogateescape")
    if proc.returncode != 0:
        detail = (proc.stderr.decode(errors="replace") or out).strip().splitlines()
        raise ManifestError(
            f"ldd({path!r}) failed" + (f": {detail[-1].strip()}" if detail else "")
        )
    libs: set[str] = set()
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[1] == "=>" and fields[2].startswith("/"):
            libs.add(fields[2])
        elif len(fields) >= 2 and fields[0].startswith("/") and fields[1].startswith("(0x"):
            libs.add(fields[0])
    return libs


def make_globals() -> dict[str, Any]:
    """The template globals, as Gramine defines them (before ``-D`` defines)."""
    return {
        "gramine": GramineNamespace(),
        "python": _python_namespace(),
        "env": os.environ,
        "ldd": ldd,
        "libc": "glibc",
    }


# --------------------------------------------------------------------------- rendering


class _Loader(jinja2.BaseLoader):
    """The template itself under ``name``, ``{% include %}`` files from ``search_dirs``."""

    def __init__(self, name: str, source: str, search_dirs: Sequence[Path]) -> None:
        self.name = name
        self.source = source
        self.filenames = {name}
        self.files = (
            jinja2.FileSystemLoader([os.fspath(d) for d in search_dirs]) if search_dirs else None
        )

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        if template == self.name:
            return self.source, self.name, lambda: True
        if self.files is None:
            raise jinja2.TemplateNotFound(template)
        source, filename, uptodate = self.files.get_source(environment, template)
        if filename is not None:
            self.filenames.add(filename)
        return source, filename, uptodate


def make_environment(loader: jinja2.BaseLoader | None = None) -> jinja2.Environment:
    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        loader=loader,
    )
    env.globals.update(make_globals())
    return env


_UNDEFINED_VAR = re.compile(r"'(.+)' is undefined")
_UNDEFINED_ATTR = re.compile(r"'(.+)' has no attribute '(.+)'")


def render(
    template: str,
    *,
    defines: Mapping[str, object],
    name: str = "<string>",
    search_dirs: Sequence[Path] = (),
) -> str:
    """Render a manifest template with Gramine's globals and the ``-D`` ``defines``."""
    loader = _Loader(name, template, search_dirs)
    env = make_environment(loader)
    try:
        return env.get_template(name).render(**dict(defines))
    except jinja2.TemplateSyntaxError as e:
        where = f"{e.filename or e.name or name}:{e.lineno}"
        raise ManifestError(f"template syntax error: {e.message}", where=where) from None
    except jinja2.UndefinedError as e:
        where = _location(e.__traceback__, loader.filenames) or name
        raise ManifestError(_undefined_message(str(e)), where=where) from None
    except jinja2.TemplateNotFound as e:
        where = _location(e.__traceback__, loader.filenames) or name
        dirs = ", ".join(os.fspath(d) for d in search_dirs) or "no search directories"
        raise ManifestError(f"included template not found: {e.name} (looked in {dirs})",
                            where=where) from None
    except jinja2.TemplateError as e:
        where = _location(e.__traceback__, loader.filenames) or name
        raise ManifestError(f"template error: {e}", where=where) from None
    except ManifestError as e:
        where = _location(e.__traceback__, loader.filenames) or name
        raise ManifestError(str(e), where=where) from None
    except Exception as e:
        place = _location(e.__traceback__, loader.filenames)
        if place is None:
            raise  # not raised by template code: a bug in Geode
        raise ManifestError(f"error in template expression: {type(e).__name__}: {e}",
                            where=place) from None


def _location(tb: TracebackType | None, filenames: set[str]) -> str | None:
    """``FILE:LINE`` of the innermost template frame of ``tb``, if any."""
    where = None
    for frame in traceback.extract_tb(tb):
        if frame.filename in filenames:
            where = f"{frame.filename}:{frame.lineno}"
    return where


def _undefined_message(message: str) -> str:
    if m := _UNDEFINED_VAR.fullmatch(message):
        return f"undefined variable '{m[1]}'"
    if m := _UNDEFINED_ATTR.fullmatch(message):
        if m[1] == "os._Environ object":
            return f"undefined environment variable '{m[2]}' (env.{m[2]})"
        return f"undefined attribute '{m[2]}' ({m[1]} has no attribute '{m[2]}')"
    return f"undefined value: {message}"


def parse_toml(text: str, *, name: str) -> dict[str, Any]:
    """Parse the rendered manifest; errors give ``NAME:LINE:COLUMN`` of the rendered text."""
    try:
        return tomlio.loads(text)
    except tomlio.TOMLDecodeError as e:
        message = str(e)
        lines = text.splitlines()
        if m := re.fullmatch(r"(.*) \(at line (\d+), column (\d+)\)", message, re.S):
            reason, line, column = m[1], int(m[2]), int(m[3])
        elif m := re.fullmatch(r"(.*) \(at end of document\)", message, re.S):
            reason, line = m[1], max(len(lines), 1)
            column = len(lines[-1]) + 1 if lines else 1
        else:
            raise ManifestError(f"invalid TOML after rendering: {message}", where=name) \
                from None
        snippet = lines[line - 1].strip() if 0 < line <= len(lines) else ""
        if len(snippet) > 80:
            snippet = snippet[:77] + "..."
        detail = f" in {snippet!r}" if snippet else ""
        raise ManifestError(f"invalid TOML after rendering: {reason}{detail}",
                            where=f"{name}:{line}:{column}") from None
