"""The ``geode`` command: one subcommand per job; ``gramine-*`` aliases live in gramine.py."""

from __future__ import annotations

import argparse
import gc
import importlib
import sys
from collections.abc import Sequence

from geode import __version__
from geode.cli.common import Command, exit_now, invoke, log_to_stderr

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: The subcommands in ``geode --help`` order: (name, module in geode.cli, attribute). Only the
#: module of the command being run is imported, so that ``geode run`` does not load, say,
#: the RA-TLS server's asyncio or the quote verifier.
_COMMAND_SOURCES: tuple[tuple[str, str, str], ...] = (
    ("run", "run", "RUN"),
    ("manifest", "manifest", "MANIFEST"),
    ("manifest-check", "manifest", "MANIFEST_CHECK"),
    ("sign", "signing", "SIGN"),
    ("gen-key", "signing", "GEN_KEY"),
    ("sigstruct", "signing", "SIGSTRUCT"),
    ("measure", "signing", "MEASURE"),
    ("identity", "signing", "IDENTITY"),
    ("pf", "pf", "COMMAND"),
    ("quote", "quote", "COMMAND"),
    ("tee", "tee", "COMMAND"),
    ("ratls", "ratls", "COMMAND"),
    ("secret-prov", "secret_prov", "COMMAND"),
    ("argv-serializer", "argv_serializer", "COMMAND"),
)


def _load(module: str, attribute: str) -> Command:
    command: Command = getattr(importlib.import_module(f"geode.cli.{module}"), attribute)
    return command


def __getattr__(name: str) -> Any:
    if name == "COMMANDS":  # every command, in --help order (imports every command module)
        return tuple(_load(module, attr) for _, module, attr in _COMMAND_SOURCES)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``geode`` parser; with ``only``, just that subcommand's (start-up time)."""
    parser = argparse.ArgumentParser(
        prog="geode",
        description="Run unmodified Linux programs in a manifest-defined shield "
        "(Gramine-compatible manifests, signing, trusted and encrypted files).",
    )
    parser.add_argument("--version", action="version", version=f"geode {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module, attr in _COMMAND_SOURCES:
        if only is not None and name != only:
            continue
        command = _load(module, attr)
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(p)
        p.set_defaults(_handler=command.handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    log_to_stderr("geode")
    argv_from_process = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    names = {name for name, _, _ in _COMMAND_SOURCES}
    only = argv[0] if argv and argv[0] in names else None
    if only == "run" and argv_from_process:
        gc.disable()  # (the run command resumes it; see cli.run._run)
    args = build_parser(only).parse_args(argv)
    status = invoke("geode", args._handler, args)
    if only == "run" and argv_from_process:  # the `geode` command itself, not a caller
        exit_now(status)
    return status


if __name__ == "__main__":
    sys.exit(main())
