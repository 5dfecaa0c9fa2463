"""The ``geode`` command: one subcommand per job; ``gramine-*`` aliases live in gramine.py."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from geode import __version__
from geode.cli import argv_serializer, manifest, pf, quote, ratls, run, secret_prov, signing, tee
from geode.cli.common import Command, invoke

COMMANDS: tuple[Command, ...] = (
    run.RUN,
    manifest.MANIFEST,
    manifest.MANIFEST_CHECK,
    signing.SIGN,
    signing.GEN_KEY,
    signing.SIGSTRUCT,
    signing.MEASURE,
    signing.IDENTITY,
    pf.COMMAND,
    quote.COMMAND,
    tee.COMMAND,
    ratls.COMMAND,
    secret_prov.COMMAND,
    argv_serializer.COMMAND,
)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``geode`` parser; with ``only``, just that subcommand's (start-up time)."""
    parser = argparse.ArgumentParser(
        prog="geode",
        description="Run unmodified Linux programs in a manifest-defined shield "
        "(Gramine-compatible manifests, signing, trusted and encrypted files).",
    )
    parser.add_argument("--version", action="version", version=f"geode {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        if only is not None and command.name != only:
            continue
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(p)
        p.set_defaults(_handler=command.handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(format="geode: %(message)s", level=logging.WARNING)
    argv = list(sys.argv[1:] if argv is None else argv)
    names = {c.name for c in COMMANDS}
    only = argv[0] if argv and argv[0] in names else None
    args = build_parser(only).parse_args(argv)
    return invoke("geode", args._handler, args)


if __name__ == "__main__":
    sys.exit(main())
