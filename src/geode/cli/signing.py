"""Signing commands: sign (gramine-sgx-sign), gen-key, sigstruct view/verify, measure, identity."""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any

from geode.cli.common import Command
from geode.errors import GeodeError

# --- sign ---------------------------------------------------------------------------------------

def _add_sign(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--manifest", type=Path, required=True, help="input .manifest")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="output .manifest.sgx (the manifest with every hash filled in)")
    parser.add_argument("-k", "--key", type=Path, help="signing key (.pem); default: "
                        "$XDG_CONFIG_HOME/gramine/enclave-key.pem")
    parser.add_argument("-p", "--passphrase", help="passphrase of the signing key")
    parser.add_argument("-s", "--sigfile", type=Path, help="output .sig (default: beside the "
                        "manifest, APP.sig)")
    parser.add_argument("-d", "--date", default="today", help="SIGSTRUCT date: YYYY-MM-DD or "
                        "'today' (default)")
    parser.add_argument("-l", "--libpal", help="accepted for Gramine compatibility; Geode has "
                        "no PAL binary, its runtime identity is measured instead")
    parser.add_argument("--with", dest="plugin", default="file",
                        help="signing plugin; Geode has the built-in 'file' plugin only")
    parser.add_argument("--depfile", type=Path, help="write Make dependencies of the outputs")
    parser.add_argument("--chroot", type=Path, metavar="DIR",
                        help="resolve trusted files' host paths below DIR")
    parser.add_argument("-v", "--verbose", dest="verbose", action="store_true", default=True)
    parser.add_argument("-q", "--quiet", dest="verbose", action="store_false")


def _run_sign(args: argparse.Namespace) -> int:
    from geode.formats.sigstruct import view
    from geode.fsutil import atomic_write
    from geode.signing.keys import default_key_path
    from geode.signing.sign import parse_date, sign_manifest

    if args.plugin != "file":
        raise GeodeError(f"unknown signing plugin {args.plugin!r} (Geode has 'file' only)")
    signed = sign_manifest(
        args.manifest,
        output=args.output,
        key_path=args.key or default_key_path(),
        passphrase=args.passphrase.encode() if args.passphrase else None,
        sigfile=args.sigfile,
        date=parse_date(args.date),
        chroot=args.chroot,
    )
    # The first start after a build finds its manifest already parsed and checked.
    from geode.runtime.manifest_memo import remember

    remember(signed.manifest_bytes, args.output)
    if args.depfile:
        lines = [f"{args.output}:"] + [f" \\\n\t{p}" for p in signed.dependencies]
        atomic_write(args.depfile, ("".join(lines) + "\n").encode())
    if args.verbose:
        print("Attributes:")
        for key, value in view(signed.sigstruct).items():
            print(f"    {key}: {value}")
    return 0


SIGN = Command("sign", "measure and sign a manifest (gramine-sgx-sign)", _add_sign, _run_sign)


# --- gen-key -------------------------------------------------------------------------------------

def _add_gen_key(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--force", action="store_true", help="overwrite an existing key")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not print the key path")
    parser.add_argument("-v", "--verbose", dest="quiet", action="store_false")
    parser.add_argument("output", nargs="?", type=Path,
                        help="key file (default $XDG_CONFIG_HOME/gramine/enclave-key.pem)")


def _run_gen_key(args: argparse.Namespace) -> int:
    from geode.signing.keys import default_key_path, generate_private_key

    path = args.output or default_key_path()
    generate_private_key(path, force=args.force)
    if not args.quiet:
        print(f"wrote RSA 3072 private key to {path}")
    return 0


GEN_KEY = Command("gen-key", "generate an RSA-3072 e=3 signing key "
                  "(gramine-sgx-gen-private-key)", _add_gen_key, _run_gen_key)


# --- sigstruct view / verify --------------------------------------------------------------------

def _add_view(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sigfile", type=Path, help=".sig file")
    parser.add_argument("-v", "--verbose", dest="verbose", action="store_true", default=False,
                        help="show attributes, masks and date too")
    parser.add_argument("-q", "--quiet", dest="verbose", action="store_false")
    parser.add_argument("--output-format", choices=("text", "toml", "json"), default="text")
    parser.add_argument("output", nargs="?", default="-", help="output file (default stdout)")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise GeodeError(f"cannot read: {e.strerror}", where=str(path)) from None


def _format(data: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=4) + "\n"
    if fmt == "toml":
        import tomli_w

        return tomli_w.dumps(data)
    out = io.StringIO()
    print("Attributes:", file=out)
    for key, value in data.items():
        print(f"    {key}: {value}", file=out)
    return out.getvalue()


def _emit(text: str, output: str) -> None:
    if output == "-":
        sys.stdout.write(text)
    else:
        from geode.fsutil import atomic_write

        atomic_write(Path(output), text.encode())


def _run_view(args: argparse.Namespace) -> int:
    from geode.formats.sigstruct import Sigstruct, view

    sig = Sigstruct.unpack(_read(args.sigfile))
    _emit(_format(view(sig, verbose=args.verbose), args.output_format), args.output)
    return 0


def _add_verify(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sigfile", type=Path, help=".sig file")
    parser.add_argument("--manifest", type=Path,
                        help="also check that the SIGSTRUCT signs this .manifest.sgx under "
                        "this Geode runtime (measurement, attributes, ISV ids)")
    parser.add_argument("--json", action="store_true", help="machine-readable result")


def _run_verify(args: argparse.Namespace) -> int:
    from geode.formats.sigstruct import verify
    from geode.signing.sign import check_signed_manifest

    result = verify(_read(args.sigfile))
    checks = [{"name": c.name, "passed": c.passed, "reason": c.reason} for c in result.checks]
    if result.ok and args.manifest is not None:
        try:
            check_signed_manifest(args.manifest, args.sigfile)
            checks.append({"name": "manifest", "passed": True,
                           "reason": "ENCLAVEHASH is the manifest's Geode measurement"})
        except GeodeError as e:
            checks.append({"name": "manifest", "passed": False, "reason": str(e)})
    ok = all(c["passed"] for c in checks)
    if args.json:
        print(json.dumps({"verified": ok, "checks": checks}, indent=2))
    else:
        for c in checks:
            print(f"{'ok  ' if c['passed'] else 'FAIL'} {c['name']}: {c['reason']}")
        print("verified" if ok else "NOT verified")
    return 0 if ok else 1


def _add_sigstruct(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    view = sub.add_parser("view", help="print the SIGSTRUCT's fields")
    _add_view(view)
    view.set_defaults(_handler=_run_view)
    ver = sub.add_parser("verify", help="check a SIGSTRUCT against the Intel SDM rules")
    _add_verify(ver)
    ver.set_defaults(_handler=_run_verify)


def _run_sigstruct(args: argparse.Namespace) -> int:
    handler = args._handler
    result: int = handler(args)
    return result


SIGSTRUCT = Command("sigstruct", "view or verify a .sig file", _add_sigstruct, _run_sigstruct)
SIGSTRUCT_VIEW = Command("sigstruct-view", "print a .sig file's fields", _add_view, _run_view)


# --- measure / identity -------------------------------------------------------------------------

def _add_measure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", type=Path, help="final manifest (.manifest.sgx)")
    parser.add_argument("--identity", help="runtime identity digest (hex) to measure under "
                        "(default: this installation's)")


def _run_measure(args: argparse.Namespace) -> int:
    from geode.measurement import measure

    identity = None
    if args.identity:
        try:
            identity = bytes.fromhex(args.identity)
        except ValueError:
            raise GeodeError("--identity: not hex") from None
        if len(identity) != 32:
            raise GeodeError("--identity: expected 32 bytes (64 hex digits)")
    print(measure(_read(args.manifest), identity).hex())
    return 0


MEASURE = Command("measure", "print the Geode measurement (MRENCLAVE) of a final manifest",
                  _add_measure, _run_measure)


def _add_identity(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--list", action="store_true", help="print the identity file itself")


def _run_identity(args: argparse.Namespace) -> int:
    from geode.measurement import runtime_identity, runtime_identity_text

    sys.stdout.write(runtime_identity_text() if args.list else runtime_identity().hex() + "\n")
    return 0


IDENTITY = Command("identity", "print this installation's runtime identity digest",
                   _add_identity, _run_identity)
