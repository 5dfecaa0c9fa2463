"""``geode ratls`` / ``gramine-ratls [-D|-P] CERT KEY [--] [CMD ARGS...]``: inside the shield,
write an RA-TLS certificate and its key, then ``execvp`` CMD (Gramine's "pre-main" wrapper,
e.g. for nginx serving HTTPS with an attested certificate).

As in Gramine, both files are PEM by default (``-P``) or DER with ``-D``; without CMD the tool
just writes them. The evidence comes from ``/dev/attestation`` (write ``user_report_data``,
read ``quote``), so this must run inside the shield: Geode's CLI is not in the view, so the
program runs this module with the shield's own python (the geode package files it needs are
mounted read-only and trusted, see examples/ra-tls-secret-prov)::

    python3 -m geode.cli.ratls -P /tmp/crt.pem /tmp/key.pem -- /usr/sbin/nginx ...

``RA_TLS_CERT_TIMESTAMP_NOT_BEFORE`` / ``_NOT_AFTER`` set the validity window. This module
imports only the standard library, ``cryptography`` and ``cbor2``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from geode.cli.common import Command, invoke, run_single
from geode.errors import GeodeError


def _add(parser: argparse.ArgumentParser) -> None:
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("-D", "--der", dest="pem", action="store_false",
                     help="write the certificate and key in DER")
    fmt.add_argument("-P", "--pem", dest="pem", action="store_true",
                     help="write the certificate and key in PEM (the default)")
    parser.set_defaults(pem=True)
    parser.add_argument("--legacy", action="store_true",
                        help="Geode: put the evidence under the legacy OID "
                        "1.2.840.113741.1337.6 instead of the TCG DICE one")
    parser.add_argument("--attestation-dir", default="/dev/attestation", metavar="DIR",
                        help=argparse.SUPPRESS)
    parser.add_argument("cert", metavar="CERT", help="where to write the certificate")
    parser.add_argument("key", metavar="KEY", help="where to write the private key")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD",
                        help="program to execute afterwards (execvp), with its arguments")


def _run(args: argparse.Namespace) -> int:
    from geode.ratls.cert import create, dev_attestation_source

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    creds = create(dev_attestation_source(args.attestation_dir), legacy=args.legacy)
    creds.write(args.cert, args.key, pem=args.pem)
    if not command:
        return 0
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(command[0], command)
    except OSError as e:
        raise GeodeError(f"cannot execute {command[0]}: {e.strerror}") from None
    return 127  # not reached


COMMAND = Command("ratls", "write an RA-TLS certificate and key, then run a command "
                  "(gramine-ratls; inside the shield)", _add, _run)


def gramine_ratls() -> int:
    """Console script ``gramine-ratls``."""
    return run_single("gramine-ratls", COMMAND)


def main(argv: Sequence[str] | None = None) -> int:
    """``python3 -m geode.cli.ratls`` (what a program inside the shield runs)."""
    parser = argparse.ArgumentParser(prog="gramine-ratls", description=COMMAND.help)
    _add(parser)
    args = parser.parse_args(argv)
    return invoke("gramine-ratls", _run, args)


if __name__ == "__main__":
    sys.exit(main())
