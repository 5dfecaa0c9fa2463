"""``geode quote view | verify``: inspect and verify SGX/TDX DCAP quotes and SEV-SNP reports.

``gramine-sgx-quote-view [-m] QUOTE`` is the Gramine-named alias of ``geode quote view``
(``-m``/``--msb`` prints byte strings most-significant byte first, as Gramine's tool does).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from geode.cli.common import Command, hex_arg, invoke, rtmr_arg, run_single
from geode.errors import GeodeError

# The fields printed first by ``view``, per kind; everything else follows.
_PRIMARY = {
    "sgx": ("mr_enclave", "mr_signer", "isv_prod_id", "isv_svn", "report_data"),
    "tdx": ("mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "report_data"),
    "snp": ("measurement", "report_data", "policy", "reported_tcb", "signing_key"),
}


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise GeodeError(f"cannot read: {e.strerror}", where=str(path)) from None


def parse_evidence_fields(data: bytes, *, allow_trailing: bool = False) -> dict[str, Any]:
    """Parsed fields of a quote or SNP report (raises FormatError)."""
    from geode.verify.quote import looks_like_quote, parse_quote
    from geode.verify.snp import REPORT_SIZE, parse_snp_report

    if len(data) == REPORT_SIZE and not looks_like_quote(data):
        return parse_snp_report(data).fields()
    return parse_quote(data, allow_trailing=allow_trailing).fields()


def _msb(value: Any) -> Any:
    if isinstance(value, str) and len(value) % 2 == 0 and len(value) >= 4:
        try:
            return bytes.fromhex(value)[::-1].hex()
        except ValueError:
            return value
    if isinstance(value, dict):
        return {k: _msb(v) for k, v in value.items()}
    return value


def _ordered(fields: dict[str, Any]) -> dict[str, Any]:
    primary = _PRIMARY.get(str(fields.get("kind")), ())
    out = {"kind": fields.get("kind")}
    out.update({k: fields[k] for k in primary if k in fields})
    out.update({k: v for k, v in fields.items() if k not in out})
    return out


def _print_fields(fields: dict[str, Any], indent: str = "") -> None:
    for key, value in fields.items():
        if isinstance(value, dict):
            print(f"{indent}{key}:")
            _print_fields(value, indent + "    ")
        else:
            print(f"{indent}{key}: {value}")


# --- view --------------------------------------------------------------------------------------

def _add_view(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, metavar="FILE",
                        help="DCAP quote (SGX v3, TDX v4/v5) or SEV-SNP report (1184 bytes)")
    parser.add_argument("--json", action="store_true", help="print every field as JSON")
    parser.add_argument("-m", "--msb", action="store_true",
                        help="print byte strings most-significant byte first")
    parser.add_argument("--allow-trailing", action="store_true",
                        help="accept bytes after the quote's signature data")


def _run_view(args: argparse.Namespace) -> int:
    fields = _ordered(parse_evidence_fields(_read(args.file),
                                            allow_trailing=args.allow_trailing))
    if args.msb:
        fields = _msb(fields)
    if args.json:
        print(json.dumps(fields, indent=2))
    else:
        _print_fields(fields)
    return 0


# --- verify ------------------------------------------------------------------------------------

def parse_at(text: str) -> datetime:
    """``--at``: ISO-8601 (``Z`` or an offset; naive means UTC) or Unix seconds."""
    try:
        return datetime.fromtimestamp(float(text), UTC)
    except (ValueError, OverflowError, OSError):
        pass
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise GeodeError(f"--at {text!r}: not ISO-8601 or Unix seconds") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _add_verify(parser: argparse.ArgumentParser) -> None:
    from geode.verify.collateral import TCB_STATUSES

    parser.add_argument("file", type=Path, metavar="FILE",
                        help="DCAP quote (SGX v3, TDX v4/v5) or SEV-SNP report")
    parser.add_argument("--collateral", action="append", type=Path, default=[], metavar="DIR",
                        help="directory or file of collateral, recognised by content (TCB "
                        "info, QE identity, CRLs, issuer chains, VCEK/VLEK, ASK/ARK); repeat")
    parser.add_argument("--at", type=parse_at, metavar="TIME",
                        help="verification time: ISO-8601 or Unix seconds (default: now)")
    parser.add_argument("--allow-simulated", action="store_true",
                        help="accept Geode simulated evidence (a simulation root CA found in "
                        "the collateral or given with --sim-root)")
    parser.add_argument("--sim-root", action="append", type=Path, default=[], metavar="FILE",
                        help="a simulation root CA certificate (PEM or DER)")
    parser.add_argument("--allow-tcb", action="append", default=[], metavar="STATUS",
                        choices=TCB_STATUSES,
                        help="accept this TCB status besides UpToDate; repeat")
    parser.add_argument("--allow-debug", action="store_true",
                        help="accept debug enclaves, TDs and guests")
    parser.add_argument("--allow-trailing", action="store_true",
                        help="accept bytes after the quote's signature data")
    parser.add_argument("--expect-mrenclave", type=hex_arg, metavar="HEX")
    parser.add_argument("--expect-mrsigner", type=hex_arg, metavar="HEX")
    parser.add_argument("--expect-isv-prod-id", type=int, metavar="N")
    parser.add_argument("--expect-isv-svn-min", type=int, metavar="N")
    parser.add_argument("--expect-mrtd", type=hex_arg, metavar="HEX")
    parser.add_argument("--expect-rtmr", type=rtmr_arg, action="append", default=[],
                        metavar="N=HEX", help="expected RTMR N (0..3); repeat")
    parser.add_argument("--expect-measurement", type=hex_arg, metavar="HEX",
                        help="expected SEV-SNP launch measurement")
    parser.add_argument("--expect-report-data", type=hex_arg, metavar="HEX",
                        help="expected report_data (shorter values are zero-padded to 64 B)")
    parser.add_argument("--pccs", metavar="URL",
                        help="also fetch Intel collateral (TCB info, QE identity, CRLs) from "
                        "this PCCS or PCS, e.g. https://api.trustedservices.intel.com")
    parser.add_argument("--kds", metavar="URL",
                        help="also fetch the VCEK, ASK/ARK and CRL from this AMD KDS, e.g. "
                        "https://kdsintf.amd.com")
    parser.add_argument("--json", action="store_true", help="machine-readable result")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also list the collateral files recognised and ignored")


def _run_verify(args: argparse.Namespace) -> int:
    from geode.verify import pki
    from geode.verify.collateral import Collateral
    from geode.verify.result import Policy
    from geode.verify.verifier import Verifier

    evidence = _read(args.file)
    collateral = Collateral.load(args.collateral)
    if args.pccs or args.kds:
        from geode.verify.fetch import fetch_for_evidence

        fetch_for_evidence(evidence, pccs_url=args.pccs, kds_url=args.kds, into=collateral)
    sim_roots = [c for c in collateral.certificates
                 if pki.is_simulation_cert(c) and pki.is_self_signed(c)]
    for path in args.sim_root:
        sim_roots.extend(pki.load_certificates(_read(path), str(path)))
    verifier = Verifier(collateral, simulation_roots=sim_roots,
                        allow_simulated=args.allow_simulated)
    result = verifier.verify(evidence, args.at, allow_trailing=args.allow_trailing)
    fmt = result.check("format")
    if fmt is not None and fmt.passed:
        policy = Policy(
            mr_enclave=args.expect_mrenclave, mr_signer=args.expect_mrsigner,
            isv_prod_id=args.expect_isv_prod_id, isv_svn_min=args.expect_isv_svn_min,
            mr_td=args.expect_mrtd, rtmrs=dict(args.expect_rtmr) or None,
            snp_measurement=args.expect_measurement, report_data=args.expect_report_data,
            allowed_tcb_statuses={"UpToDate", *args.allow_tcb},
            allow_debug=args.allow_debug, allow_simulated=args.allow_simulated,
        )
        result = result.with_policy(policy)
    if args.json:
        out = result.to_dict()
        if args.verbose:
            out["collateral"] = {"recognised": [list(x) for x in collateral.recognised],
                                 "ignored": [list(x) for x in collateral.ignored]}
        print(json.dumps(out, indent=2))
    else:
        if args.verbose:
            for source, what in collateral.recognised:
                print(f"collateral {source}: {what}")
            for source, why in collateral.ignored:
                print(f"ignored    {source}: {why}")
        for c in result.checks:
            tag = {"passed": "ok      ", "failed": "FAILED  ", "not done": "NOT DONE"}[c.status]
            print(f"{tag} {c.name}: {c.reason}")
        summary = f"{result.kind.upper()}"
        if result.tcb_status:
            summary += f", TCB status {result.tcb_status}"
        if result.advisory_ids:
            summary += f", advisories {', '.join(result.advisory_ids)}"
        if result.simulated:
            summary += ", SIMULATED"
        if result.verified:
            print(f"verified: {summary}")
        else:
            bad = [f"{c.name} ({c.status})" for c in result.failures()]
            print(f"NOT verified: {summary}; {', '.join(bad)}")
    return 0 if result.verified else 1


def _add_quote(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    view = sub.add_parser("view", help="print a quote's or report's fields",
                          description="print a quote's or report's fields")
    _add_view(view)
    view.set_defaults(_action=_run_view)
    ver = sub.add_parser("verify", help="verify a quote or report against collateral",
                         description="verify a quote or report against collateral; exit 0 "
                         "only when every check passes")
    _add_verify(ver)
    ver.set_defaults(_action=_run_verify)


def _run_quote(args: argparse.Namespace) -> int:
    result: int = args._action(args)
    return result


COMMAND = Command("quote", "view or verify SGX/TDX quotes and SEV-SNP reports", _add_quote,
                  _run_quote)
VIEW = Command("quote-view", "print an SGX/TDX quote's fields", _add_view, _run_view)


def gramine_quote_view() -> int:
    """Console script ``gramine-sgx-quote-view [-m] QUOTE``."""
    return run_single("gramine-sgx-quote-view", VIEW)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m geode.cli.quote ACTION ...`` (the same as ``geode quote ACTION ...``)."""
    parser = argparse.ArgumentParser(prog="geode quote", description=COMMAND.help)
    COMMAND.add_arguments(parser)
    args = parser.parse_args(argv)
    return invoke("geode", COMMAND.handler, args)


if __name__ == "__main__":
    sys.exit(main())
