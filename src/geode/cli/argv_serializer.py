"""``gramine-argv-serializer``: write arguments for ``loader.argv_src_file``."""

from __future__ import annotations

import argparse
import sys

from geode.cli.common import Command
from geode.errors import GeodeError


def serialize_argv(args: list[str]) -> bytes:
    """Gramine's format: each argument followed by a NUL byte."""
    out = bytearray()
    for i, arg in enumerate(args):
        data = arg.encode("utf-8", "surrogateescape")
        if b"\0" in data:
            raise GeodeError(f"argument {i} contains a NUL byte")
        out += data + b"\0"
    return bytes(out)


def _add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments, argv[0] first")


def _run(args: argparse.Namespace) -> int:
    sys.stdout.buffer.write(serialize_argv(args.args))
    sys.stdout.buffer.flush()
    return 0


COMMAND = Command(
    "argv-serializer",
    "serialize arguments for loader.argv_src_file (to stdout)",
    _add,
    _run,
)
