"""``geode manifest`` (gramine-manifest) and ``geode manifest-check`` (gramine-manifest-check)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from geode.cli.common import Command
from geode.errors import GeodeError, ManifestError
from geode.fsutil import atomic_write


def _parse_define(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not key:
        raise argparse.ArgumentTypeError(f"bad define {value!r}: expected KEY=VALUE")
    # Gramine turns a bare "-D KEY" into True; a string "True" renders the same in Jinja.
    return key, val if sep else "True"


def _add_manifest(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--string", help="manifest template given as a string")
    parser.add_argument(
        "-D", "--define", action="append", type=_parse_define, default=[], metavar="KEY=VALUE",
        help="define a template variable (repeatable)",
    )
    parser.add_argument("--check", dest="check", action="store_true", default=True,
                        help="check the rendered manifest against the schema (default)")
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="do not check the rendered manifest")
    parser.add_argument("--chroot", type=Path, metavar="DIR",
                        help="resolve trusted files' host paths below DIR")
    parser.add_argument("--progress", dest="progress", action="store_true", default=None,
                        help="always show hashing progress (default: only on a terminal)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("infile", nargs="?", help="template file ('-' for stdin)")
    parser.add_argument("outfile", nargs="?", default="-", help="output file (default stdout)")


def _read_template(args: argparse.Namespace) -> tuple[str, str]:
    if bool(args.string) == bool(args.infile):
        raise GeodeError("specify exactly one of INFILE and -c STRING")
    if args.string:
        return args.string, "<string>"
    if args.infile == "-":
        return sys.stdin.read(), "<stdin>"
    try:
        return Path(args.infile).read_text(encoding="utf-8"), args.infile
    except OSError as e:
        raise ManifestError(f"cannot read template: {e.strerror}", where=args.infile) from None
    except UnicodeDecodeError:
        raise ManifestError("template is not UTF-8 text", where=args.infile) from None


def _run_manifest(args: argparse.Namespace) -> int:
    from geode.manifest import build
    from geode.manifest.banner import banner_text, insecure_settings

    template, name = _read_template(args)
    manifest = build.build(
        template, defines=dict(args.define), name=name, chroot=args.chroot,
        check=args.check, progress=args.progress,
    )
    data = build.dumps(manifest)
    if args.outfile == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        atomic_write(Path(args.outfile), data)
        # The first start after a build finds its manifest already parsed and checked.
        from geode.runtime.manifest_memo import remember

        remember(data, args.outfile)
    insecure = insecure_settings(manifest)
    if insecure:
        print(banner_text(insecure), file=sys.stderr)
    return 0


def _add_check(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="rendered manifest to check")


def _run_check(args: argparse.Namespace) -> int:
    from geode.manifest import build, schema

    schema.check(build.load(args.file), source=str(args.file))
    return 0


MANIFEST = Command("manifest", "render a manifest template (gramine-manifest)",
                   _add_manifest, _run_manifest)
MANIFEST_CHECK = Command("manifest-check", "check a rendered manifest against the schema",
                         _add_check, _run_check)
