"""What every command shares: one-line errors, exit codes, parser plumbing."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from geode.errors import GeodeError

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    """A subcommand: ``geode NAME`` and, where Gramine has one, its ``gramine-*`` alias."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    handler: Handler


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


def run_single(prog: str, command: Command, argv: Sequence[str] | None = None) -> int:
    """Entry point of a ``gramine-*`` alias: the command's parser under Gramine's name."""
    logging.basicConfig(format=f"{prog}: %(message)s", level=logging.WARNING)
    parser = argparse.ArgumentParser(prog=prog, description=command.help)
    command.add_arguments(parser)
    args = parser.parse_args(argv)
    return invoke(prog, command.handler, args)
