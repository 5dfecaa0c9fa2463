"""``geode pf gen-key | encrypt | decrypt`` and its alias ``gramine-sgx-pf-crypt``.

Files and directory trees are converted to and from Gramine's protected-file format. As with
Gramine's tool, ``encrypt -o OUT`` binds each file to the normalised output path string (for a
directory, ``OUT/NAME`` for each entry, recursively) and prints that string: it is the path the
program must use inside the shield. ``decrypt`` checks the bound path only with ``-V``, against
the normalised input path. Outputs are written to a temporary file and renamed into place, so a
failure (wrong key, wrong path, corrupt input) leaves no output file behind.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from geode.cli.common import Command, run_single
from geode.errors import GeodeError

KEY_SIZE = 16
_CHUNK = 1 << 20


# --- the three operations -----------------------------------------------------------------------

def gen_key(key_path: str) -> None:
    """Write a fresh random 16-byte wrap key to ``key_path`` (mode 0600), replacing it."""
    from geode.fsutil import atomic_write

    atomic_write(Path(key_path), os.urandom(KEY_SIZE), mode=0o600)


def load_key(key_path: str) -> bytes:
    try:
        key = Path(key_path).read_bytes()
    except OSError as e:
        raise GeodeError(f"cannot read wrap key: {e.strerror}", where=key_path) from None
    if len(key) != KEY_SIZE:
        raise GeodeError(f"wrap key must be exactly {KEY_SIZE} bytes, this file has {len(key)}",
                         where=key_path)
    return key


def encrypt_file(src: str, dst: str, key: bytes, *, verbose: bool = False) -> str:
    """Encrypt ``src`` into ``dst``, bound to the normalised ``dst``; return that path."""
    from geode.formats.pf import ProtectedFile, norm_path
    from geode.fsutil import output_files

    bound = norm_path(dst)
    if not bound:
        raise GeodeError("output path is empty once normalised", where=dst)
    print(f"Encrypting: {src} -> {bound}")
    print(f"            (Gramine's encrypted files must contain this exact path: \"{bound}\")")
    with _open_input(src) as fin, output_files(Path(bound), mode=0o664) as (tmp,), \
            open(tmp, "r+b") as fout:
        pf = ProtectedFile.open(fout, key=key, path=bound, create=True, name=bound)
        offset = 0
        while chunk := _read(fin, src):
            pf.write(offset, chunk)
            offset += len(chunk)
        pf.close()
        if verbose:
            print(f"            {offset} bytes, {_node_count(offset)} nodes of 4096 bytes")
    return bound


def decrypt_file(src: str, dst: str, key: bytes, *, verify_path: bool = False,
                 verbose: bool = False) -> None:
    """Decrypt ``src`` into ``dst``; with ``verify_path``, ``src`` must be the bound path."""
    from geode.formats.pf import ProtectedFile, norm_path
    from geode.fsutil import output_files

    print(f"Decrypting: {src} -> {dst}")
    with _open_input(src) as fin:
        pf = ProtectedFile.open(fin, key=key, path=norm_path(src) if verify_path else None,
                                create=False, readonly=True, name=src)
        with output_files(Path(dst), mode=0o664) as (tmp,), open(tmp, "wb") as fout:
            for offset in range(0, pf.size, _CHUNK):
                fout.write(pf.read(offset, _CHUNK))
        if verbose:
            print(f"            {pf.size} bytes, bound to \"{pf.path}\"")
        pf.close()


def convert(mode: str, src: str, dst: str, key: bytes, *, verify_path: bool = False,
            verbose: bool = False) -> None:
    """Encrypt or decrypt a file, or a directory tree into another directory tree."""
    try:
        st = os.stat(src)
    except OSError as e:
        raise GeodeError(f"cannot stat input: {e.strerror}", where=src) from None
    if stat.S_ISREG(st.st_mode):
        if mode == "encrypt":
            encrypt_file(src, dst, key, verbose=verbose)
        else:
            decrypt_file(src, dst, key, verify_path=verify_path, verbose=verbose)
        return
    if not stat.S_ISDIR(st.st_mode):
        raise GeodeError("input is neither a regular file nor a directory", where=src)
    try:
        os.makedirs(dst, mode=0o775, exist_ok=True)
        names = sorted(os.listdir(src))
    except OSError as e:
        raise GeodeError(f"cannot read or create directory: {e.strerror}",
                         where=e.filename or src) from None
    for name in names:
        child_src, child_dst = f"{src}/{name}", f"{dst}/{name}"
        try:
            child = os.stat(child_src)
        except OSError as e:
            raise GeodeError(f"cannot stat input: {e.strerror}", where=child_src) from None
        if stat.S_ISREG(child.st_mode) or stat.S_ISDIR(child.st_mode):
            convert(mode, child_src, child_dst, key, verify_path=verify_path, verbose=verbose)
        else:
            print(f"Skipping non-regular file {child_src}")


def _open_input(src: str) -> BinaryIO:
    try:
        return open(src, "rb")  # noqa: SIM115 - the caller's with-statement closes it
    except OSError as e:
        raise GeodeError(f"cannot open input: {e.strerror}", where=src) from None


def _read(f: BinaryIO, name: str) -> bytes:
    try:
        return f.read(_CHUNK)
    except OSError as e:
        raise GeodeError(f"cannot read input: {e.strerror}", where=name) from None


def _node_count(size: int) -> int:
    from geode.formats.pf.layout import physical_node_count

    return physical_node_count(size)


# --- argument handling --------------------------------------------------------------------------

def _add_io(parser: argparse.ArgumentParser, *, decrypt: bool) -> None:
    parser.add_argument("-w", "--wrap-key", required=True, metavar="KEYFILE",
                        help="16-byte wrap key file (must exist)")
    parser.add_argument("-i", "--input", required=True, metavar="PATH",
                        help="file, or directory converted recursively")
    parser.add_argument("-o", "--output", required=True, metavar="PATH",
                        help="output file or directory" + ("" if decrypt else
                        "; each file is bound to its normalised output path"))
    if decrypt:
        parser.add_argument("-V", "--verify", action="store_true",
                            help="check that the input path is the path the file is bound to")
    parser.add_argument("-v", "--verbose", action="store_true", help="print sizes too")


def _run_gen_key(args: argparse.Namespace) -> int:
    gen_key(args.wrap_key)
    print(f"Wrap key saved to: {args.wrap_key}")
    return 0


def _run_encrypt(args: argparse.Namespace) -> int:
    convert("encrypt", args.input, args.output, load_key(args.wrap_key), verbose=args.verbose)
    return 0


def _run_decrypt(args: argparse.Namespace) -> int:
    convert("decrypt", args.input, args.output, load_key(args.wrap_key),
            verify_path=args.verify, verbose=args.verbose)
    return 0


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="pf_action", metavar="ACTION", required=True)
    gen = sub.add_parser("gen-key", help="write a new random 16-byte wrap key",
                         description="write a new random 16-byte wrap key")
    gen.add_argument("-w", "--wrap-key", required=True, metavar="KEYFILE",
                     help="key file to write")
    gen.add_argument("-v", "--verbose", action="store_true", help="accepted; no effect")
    gen.set_defaults(_pf_handler=_run_gen_key)
    enc = sub.add_parser("encrypt", help="encrypt files into protected files",
                         description="encrypt a file or a directory tree into protected files")
    _add_io(enc, decrypt=False)
    enc.set_defaults(_pf_handler=_run_encrypt)
    dec = sub.add_parser("decrypt", help="decrypt protected files",
                         description="decrypt a protected file or a directory tree of them")
    _add_io(dec, decrypt=True)
    dec.set_defaults(_pf_handler=_run_decrypt)


def _run(args: argparse.Namespace) -> int:
    result: int = args._pf_handler(args)
    return result


COMMAND = Command("pf", "protected (encrypted) files: gen-key, encrypt, decrypt "
                  "(gramine-sgx-pf-crypt)", _add_arguments, _run)


# --- the gramine-sgx-pf-crypt alias: MODE and options in any order ----------------------------

def _add_gramine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mode", choices=("gen-key", "encrypt", "decrypt"), help="what to do")
    parser.add_argument("-w", "--wrap-key", metavar="KEYFILE", help="wrap key file")
    parser.add_argument("-i", "--input", metavar="PATH", help="input file or directory")
    parser.add_argument("-o", "--output", metavar="PATH", help="output file or directory")
    parser.add_argument("-V", "--verify", action="store_true",
                        help="decrypt: check the bound path against the input path")
    parser.add_argument("-v", "--verbose", action="store_true", help="verbose output")


def _run_gramine(args: argparse.Namespace) -> int:
    if not args.wrap_key:
        raise GeodeError("wrap key path not specified (-w)")
    if args.mode == "gen-key":
        return _run_gen_key(args)
    if not args.input or not args.output:
        raise GeodeError("input or output path not specified (-i, -o)")
    if args.mode == "encrypt":
        if args.verify:
            raise GeodeError("path verification (-V) applies to decrypt only")
        return _run_encrypt(args)
    return _run_decrypt(args)


GRAMINE_COMMAND = Command("gramine-sgx-pf-crypt", COMMAND.help, _add_gramine_arguments,
                          _run_gramine)


def gramine_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gramine-sgx-pf-crypt`` console script."""
    return run_single("gramine-sgx-pf-crypt", GRAMINE_COMMAND, argv)


if __name__ == "__main__":
    sys.exit(gramine_main())
