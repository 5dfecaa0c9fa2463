"""What every command shares: one-line errors, exit codes, parser plumbing."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Sequence

import geode.log
from geode.errors import GeodeError
from geode.records import Record

TYPE_CHECKING = False
if TYPE_CHECKING:  # argparse itself only when a parser is built (~2 ms of each start)
    import argparse
    from typing import NoReturn

Handler = Callable[["argparse.Namespace"], int]
#: Parses the arguments without building the parser, or returns None to leave them to it.
QuickParse = Callable[[Sequence[str]], "argparse.Namespace | None"]


class Command(Record):
    """A subcommand: ``geode NAME`` and, where Gramine has one, its ``gramine-*`` alias."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    handler: Handler
    #: for a ``gramine-*`` alias that starts programs: building an argparse parser costs
    #: ~6 ms of each start (its help formatter imports shutil, its messages locale)
    quick_parse: QuickParse | None = None


def hex_arg(text: str) -> str:
    """argparse type: a hex string (optional 0x), returned lowercase without the prefix."""
    import argparse

    value = text.strip().lower().removeprefix("0x")
    try:
        bytes.fromhex(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not hex") from None
    return value


def rtmr_arg(text: str) -> tuple[int, str]:
    """argparse type: ``N=HEX`` naming a TDX RTMR (N in 0..3)."""
    import argparse

    index, sep, value = text.partition("=")
    if not sep or index not in ("0", "1", "2", "3"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected N=HEX with N in 0..3")
    return int(index), hex_arg(value)


def invoke(prog: str, handler: Handler, args: argparse.Namespace) -> int:
    """Run ``handler``; user errors become one line on stderr and exit status 1."""
    try:
        return handler(args)
    except GeodeError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 141


def exit_now(status: int) -> NoReturn:
    """End a command that ran a program: flush what Python buffers, then leave without the
    interpreter's finalization.

    After a run, finalization only frees memory (the manifest's tables, ~10,000 trusted
    files for Python) and took 20-30 ms of every ``gramine-direct`` start-to-exit. Nothing of
    the run is left to it: the program has been waited for, the view unmounted and its files
    written back, and Geode registers no atexit handlers.
    """
    geode.log.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing to say
            stream.flush()
    os._exit(status)


def log_to_stderr(prog: str) -> None:
    """Send Geode's records of level WARNING and up to stderr as ``PROG: message`` (set up
    when the first one is logged, see :mod:`geode.log`)."""
    geode.log.configure(geode.log.WARNING, functools.partial(_basic_config, prog))


def _basic_config(prog: str) -> None:
    import logging

    logging.basicConfig(format=f"{prog}: %(message)s", level=logging.WARNING)


def run_single(prog: str, command: Command, argv: Sequence[str] | None = None) -> int:
    """Entry point of a ``gramine-*`` alias: the command's parser under Gramine's name."""
    log_to_stderr(prog)
    args = None
    if command.quick_parse is not None:
        args = command.quick_parse(sys.argv[1:] if argv is None else argv)
    if args is None:
        import argparse

        parser = argparse.ArgumentParser(prog=prog, description=command.help)
        command.add_arguments(parser)
        args = parser.parse_args(argv)
    return invoke(prog, command.handler, args)
