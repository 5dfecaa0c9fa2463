"""``geode run``, ``gramine-direct`` and ``gramine-sgx``: start a program in the shield."""

from __future__ import annotations

import gc
import hmac
import os
import sys
from collections.abc import Mapping, Sequence
from types import SimpleNamespace

from geode.cli.common import Command
from geode.errors import GeodeError, ManifestError
from geode.log import get_logger
from geode.records import Record
from geode.tee import EnclaveIdentity

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from geode.runtime.sandbox import Sandbox

log = get_logger("geode")

TEE_CHOICES = ("none", "sim", "tdx", "snp")


def _app_base(app: str) -> str:
    for suffix in (".manifest.sgx", ".manifest"):
        if app.endswith(suffix):
            return app[: -len(suffix)]
    return app


class Loaded(Record):
    """A manifest verified for a run."""

    #: the checked manifest, without ``sgx.trusted_files``: a run uses that list only as
    #: ``trusted`` (geode.runtime.manifest_memo)
    manifest: dict[str, Any]
    path: str
    identity: EnclaveIdentity
    #: the view's table of trusted files (geode.runtime.plan.trusted_table)
    trusted: Mapping[str, str]


def load_for_run(manifest_arg: str | os.PathLike[str] | None, app: str | None) -> Loaded:
    """Find and verify the manifest to run.

    A signed pair ``APP.manifest.sgx`` + ``APP.sig`` is preferred and must verify (SIGSTRUCT,
    measurement under this runtime, attributes); otherwise the plain ``APP.manifest`` is used,
    as gramine-direct does. An explicit ``--manifest X.manifest.sgx`` needs its ``.sig``.
    Parsing and checking the bytes is remembered across runs
    (:mod:`geode.runtime.manifest_memo`); every verification is done on the bytes read now.
    """
    if manifest_arg is not None:
        path = os.fspath(manifest_arg)
        sig: str | None = None
        if path.endswith(".manifest.sgx"):
            sig = path[: -len(".manifest.sgx")] + ".sig"
            if not os.path.exists(sig):
                raise GeodeError(f"signed manifest without its signature {sig}", where=path)
    else:
        assert app is not None
        base = _app_base(app)
        signed, sig = base + ".manifest.sgx", base + ".sig"
        plain = base + ".manifest"
        if os.path.exists(signed):
            # A signed manifest is never silently replaced by the unsigned one.
            if not os.path.exists(sig):
                raise GeodeError(f"{signed} exists but its signature {sig} is missing")
            path = signed
        elif os.path.exists(plain):
            path, sig = plain, None
        else:
            raise GeodeError(f"no manifest for {app!r}: expected {plain} "
                             f"(or {signed} with {sig})")
    from geode.runtime.manifest_memo import parse_for_run

    base_dir = os.path.dirname(os.path.abspath(path))
    if sig is None:
        from geode.manifest import build
        from geode.measurement import measure

        data = build.read(path)
        measurement = measure(data)
        manifest, trusted = parse_for_run(data, measurement=measurement, source=path,
                                          base_dir=base_dir)
        _check_runtime_pin(manifest, path)
        return Loaded(manifest, path, EnclaveIdentity(measurement, None, manifest), trusted)

    # Only signed manifests need these.
    from geode.signing.sign import check_attributes, read_signed, verify_signature

    data, sig_bytes = read_signed(path, sig)
    sig_struct = verify_signature(data, sig_bytes, sig_path=sig)
    # (verify_signature checked that the signed ENCLAVEHASH is the measurement of data)
    manifest, trusted = parse_for_run(data, measurement=sig_struct.enclave_hash, source=path,
                                      base_dir=base_dir)
    check_attributes(manifest, sig_struct, sig_path=sig)
    _check_runtime_pin(manifest, path)
    return Loaded(manifest, path, EnclaveIdentity(sig_struct.enclave_hash, sig_struct, manifest),
                  trusted)


def _check_runtime_pin(manifest: dict[str, Any], path: str) -> None:
    """``loader.entrypoint`` names the runtime identity file; its hash must be this runtime's."""
    from geode.measurement import runtime_identity

    entry = manifest.get("loader", {}).get("entrypoint", {})
    pinned = entry.get("sha256") if isinstance(entry, dict) else None
    if pinned is None:
        raise ManifestError("loader.entrypoint.sha256 is missing: render the manifest with "
                            "gramine-manifest", where=path)
    if not hmac.compare_digest(str(pinned), runtime_identity().hex()):
        raise ManifestError(
            "loader.entrypoint.sha256 does not match this Geode runtime's identity "
            f"({runtime_identity().hex()[:16]}...): re-render the manifest with this Geode",
            where=path,
        )


def choose_tee(manifest: dict[str, Any], requested: str | None) -> str:
    """The TEE backend: explicit option > ``geode.tee`` > ``sgx.remote_attestation``.

    A manifest that asks for remote attestation never silently gets a backend without it.
    """
    declared = manifest.get("geode", {}).get("tee")
    remote = manifest.get("sgx", {}).get("remote_attestation", "none")
    tee = requested or declared or "none"
    if requested and declared and requested != declared:
        raise GeodeError(f"--tee {requested} contradicts the manifest's geode.tee = {declared!r}")
    if remote != "none" and tee == "none":
        raise GeodeError(
            f"the manifest sets sgx.remote_attestation = {remote!r} but no TEE backend was "
            "chosen: pass --tee sim|tdx|snp or set geode.tee"
        )
    return str(tee)


def _add_run(parser: argparse.ArgumentParser) -> None:
    import argparse
    from pathlib import Path

    parser.add_argument("--manifest", type=Path,
                        help="manifest to run (default: APP.manifest.sgx + APP.sig, or "
                        "APP.manifest)")
    parser.add_argument("--tee", choices=TEE_CHOICES,
                        help="TEE backend (default: geode.tee from the manifest, else none)")
    parser.add_argument("--stats-file", type=Path,
                        help="write the view's FUSE request counts (JSON) here at exit")
    parser.add_argument("app", help="application name (APP.manifest in the current directory)")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the program")


def _run(args: argparse.Namespace) -> int:
    from geode.runtime.sandbox import Sandbox

    # The sandbox's helpers create its namespaces and PID 1 on the other CPU while this
    # process imports the supervisor and loads the manifest (~10 ms of each start); PID 1
    # waits for the configuration, so nothing runs in the sandbox before the manifest is
    # verified. Forked now, while this process is single-threaded (a thread answering
    # the helpers would wait for the GIL, and stall the loading when it got it).
    try:
        sandbox = Sandbox.ahead()
    except OSError as e:  # (fork, socketpair, memfd: out of processes or descriptors)
        raise GeodeError(f"cannot start the sandbox: {e.strerror}") from None
    try:
        return _run_in(args, sandbox)
    finally:
        sandbox.discard()


def _run_in(args: argparse.Namespace, sandbox: Sandbox) -> int:
    from geode.manifest.banner import banner_text, insecure_settings
    from geode.runtime.supervisor import run

    sandbox.advance()  # (C has made its namespaces by now: it forks I while we load)

    # Loading a signed manifest allocates 10^4-10^5 objects (the trusted-files table; when
    # the manifest is parsed, a table per trusted file too) and most live as long as the
    # run: the cyclic collector walked them several times per start (~6 ms) and never found
    # garbage. So it is off while they are made; and when the command owns
    # its process (its entry point turned the collector off before importing anything, see
    # gramine.direct and main), they are then moved out of its sight for good (frozen).
    owns_process = not gc.isenabled()
    gc.disable()
    try:
        loaded = load_for_run(args.manifest, args.app)
    finally:
        if owns_process:
            gc.freeze()
        gc.enable()
    manifest = loaded.manifest
    tee = choose_tee(manifest, args.tee)
    insecure = insecure_settings(manifest)
    if insecure and manifest.get("loader", {}).get("log_level", "error") != "none":
        print(banner_text(insecure), file=sys.stderr)
    return run(manifest, manifest_path=loaded.path, host_args=list(args.args), tee=tee,
               identity=loaded.identity, stats_file=args.stats_file, trusted=loaded.trusted,
               sandbox=sandbox)


RUN = Command("run", "run a program inside its manifest's shield (gramine-direct)", _add_run,
              _run)


def _add_direct(parser: argparse.ArgumentParser) -> None:
    import argparse

    parser.add_argument("app", help="application name: runs APP.manifest(.sgx) from the "
                        "current directory")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the program")


def _quick_direct(argv: Sequence[str]) -> argparse.Namespace | None:
    """What the parser of :func:`_add_direct` gives for ``argv``, when no argument can be
    an option of its own or a ``--`` it would drop; else None (the parser decides)."""
    if not argv or argv[0].startswith("-") or "--" in argv:
        return None
    # (what the parser's Namespace would hold: argparse is not imported for a start)
    namespace: Any = SimpleNamespace(app=argv[0], args=list(argv[1:]))
    return namespace  # (a Namespace to the type checker: the parser's attributes)


def _run_direct(args: argparse.Namespace) -> int:
    args.manifest = None
    args.tee = None
    args.stats_file = None
    return _run(args)


DIRECT = Command("direct", "gramine-direct APP [ARGS...]", _add_direct, _run_direct,
                 _quick_direct)


def _run_sgx(args: argparse.Namespace) -> int:
    has_sgx = os.path.exists("/dev/sgx_enclave")
    where = ("this machine has SGX, but Geode does not create SGX enclaves"
             if has_sgx else "this machine has no SGX (no /dev/sgx_enclave)")
    raise GeodeError(
        f"{where}; Geode runs the shield on kernel mechanisms instead: use "
        f"'gramine-direct {args.app}' or 'geode run --tee sim|tdx|snp {args.app}' "
        "(sim: software TEE for development; tdx/snp: confidential VMs)"
    )


SGX = Command("sgx", "gramine-sgx APP: refused (Geode does not run SGX enclaves)", _add_direct,
              _run_sgx, _quick_direct)
