"""Loggers that load :mod:`logging` only when they have something to say.

Importing ``logging`` (with the ``traceback``, ``string`` and ``weakref`` it pulls in) costs
~7 ms, and ``gramine-direct`` starts a program on every call: at the default
``loader.log_level = "error"`` a run that goes well logs nothing, so it should not pay for
the module. Geode's modules therefore log through :func:`get_logger`, whose loggers have the
methods of :class:`logging.Logger` that Geode uses and forward to the real logger of the
same name. Invariants:

* Once ``logging`` is imported (by anyone: a test's ``caplog``, a library), every call is
  forwarded and the logging module alone decides, exactly as with ``logging.getLogger``.
* Before that, a record below :func:`threshold` is dropped without importing anything. The
  threshold is the lowest level the configuration given to :func:`configure` lets through
  (``WARNING`` until then, the level of logging's own default), so dropping agrees with what
  logging would have done.
* Configuration is deferred with it: :func:`configure` records a setup function, which runs
  (in the order given) when the first record at or above the threshold loads ``logging``, or
  at once if it is already loaded. Anything that must fail early (opening a log file) is for
  the caller to do before calling :func:`configure`.
"""

from __future__ import annotations

import _thread
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging
    from collections.abc import Callable

__all__ = ["CRITICAL", "DEBUG", "ERROR", "INFO", "WARNING", "Logger", "configure", "flush",
           "get_logger", "shutdown", "threshold"]

DEBUG, INFO, WARNING, ERROR, CRITICAL = 10, 20, 30, 40, 50

_threshold = WARNING
_setups: list[Callable[[], None]] = []
#: held while the deferred setups run: a record from another thread waits for them rather
#: than reaching logging half-configured
_setup_lock = _thread.allocate_lock()


class Logger:
    """A :class:`logging.Logger` stand-in; see the module docstring."""

    __slots__ = ("name", "_real")

    def __init__(self, name: str) -> None:
        self.name = name
        self._real: logging.Logger | None = None

    def _logger(self, level: int) -> logging.Logger | None:
        real = self._real
        if real is None:
            if level < _threshold and "logging" not in sys.modules:
                return None
            real = self._real = _real_logger(self.name)
        return real

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 (logging's name)
        real = self._logger(level)
        return real is not None and real.isEnabledFor(level)

    def _emit(self, level: int, msg: object, args: tuple[object, ...],
              kwargs: dict[str, object]) -> None:
        real = self._logger(level)
        if real is not None:
            # stacklevel=3: the record names the caller of debug() & co., as logging's would
            real.log(level, msg, *args, stacklevel=3, **kwargs)  # type: ignore[arg-type]

    def debug(self, msg: object, *args: object, **kwargs: object) -> None:
        self._emit(DEBUG, msg, args, kwargs)

    def info(self, msg: object, *args: object, **kwargs: object) -> None:
        self._emit(INFO, msg, args, kwargs)

    def warning(self, msg: object, *args: object, **kwargs: object) -> None:
        self._emit(WARNING, msg, args, kwargs)

    def error(self, msg: object, *args: object, **kwargs: object) -> None:
        self._emit(ERROR, msg, args, kwargs)

    def exception(self, msg: object, *args: object, **kwargs: object) -> None:
        """An ERROR record with the exception being handled (call it from ``except``)."""
        kwargs.setdefault("exc_info", True)
        self._emit(ERROR, msg, args, kwargs)


_loggers: dict[str, Logger] = {}


def get_logger(name: str) -> Logger:
    """The logger called ``name`` (one object per name, as :func:`logging.getLogger`)."""
    logger = _loggers.get(name)
    if logger is None:
        logger = _loggers[name] = Logger(name)
    return logger


def threshold() -> int:
    """The level below which records are dropped while ``logging`` is not loaded."""
    return _threshold


def configure(level: int, setup: Callable[[], None]) -> None:
    """Make ``level`` the threshold and run ``setup`` when ``logging`` loads (now if it is
    loaded already). ``setup`` configures the logging module to let records at ``level``
    through; it may import :mod:`logging` itself."""
    global _threshold
    _threshold = level
    _setups.append(setup)
    if "logging" in sys.modules:
        _run_setups()


def _run_setups() -> None:
    with _setup_lock:
        while _setups:
            _setups.pop(0)()


def _real_logger(name: str) -> logging.Logger:
    import logging

    _run_setups()
    return logging.getLogger(name)


def flush(name: str) -> None:
    """Flush the handlers of the logger called ``name``, if logging was ever loaded."""
    logging = sys.modules.get("logging")
    if logging is not None:
        for handler in logging.getLogger(name).handlers:
            handler.flush()


def shutdown() -> None:
    """Flush and close the handlers (:func:`logging.shutdown`), if logging was ever loaded."""
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.shutdown()
