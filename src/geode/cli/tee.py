"""``geode tee``: host-side tools of the TEE backends.

* ``geode tee sim-collateral DIR``: write the collateral (TCB info, QE identity, CRLs, TCB
  signing chain, simulation root CA) that verifies this installation's ``sim`` quotes with
  ``geode quote verify --allow-simulated --collateral DIR``.
* ``geode tee report-data (--measurement HEX | --sig APP.sig) [--user-data HEX]``: the 64-byte
  report data a ``tdx``/``snp`` quote carries for that measurement and user_report_data
  (for ``geode quote verify --expect-report-data``).
* ``geode tee verify-report REPORT --sig TARGET.sig``: local attestation on the host: is the
  432-byte ``sim`` REPORT made on this installation for the enclave of TARGET.sig?
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from geode.cli.common import Command
from geode.errors import FormatError, GeodeError
from geode.tee import EnclaveIdentity


def _hex(text: str) -> bytes:
    try:
        return bytes.fromhex(text.strip().lower().removeprefix("0x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not hex") from None


def _identity(sig_path: Path) -> EnclaveIdentity:
    from geode.formats.sigstruct import Sigstruct

    try:
        sig = Sigstruct.unpack(sig_path.read_bytes())
    except OSError as e:
        raise GeodeError(f"cannot read: {e.strerror}", where=str(sig_path)) from None
    except FormatError as e:
        raise GeodeError(str(e), where=str(sig_path)) from None
    return EnclaveIdentity(sig.enclave_hash, sig)


def _run_collateral(args: argparse.Namespace) -> int:
    from geode.tee.sim import write_collateral

    for path in write_collateral(args.dir):
        print(path)
    return 0


def _run_report_data(args: argparse.Namespace) -> int:
    from geode.tee.sgx import REPORT_DATA_SIZE
    from geode.tee.tsm import report_data

    if (args.measurement is None) == (args.sig is None):
        raise GeodeError("give exactly one of --measurement and --sig")
    measurement = args.measurement if args.sig is None else _identity(args.sig).measurement
    if len(args.user_data) > REPORT_DATA_SIZE:
        raise GeodeError("--user-data is at most 64 bytes (it is zero-padded to 64)")
    print(report_data(measurement, args.user_data.ljust(REPORT_DATA_SIZE, b"\0")).hex())
    return 0


def _run_verify_report(args: argparse.Namespace) -> int:
    from geode.tee.sgx import ReportBody, split_report
    from geode.tee.sim import SIM_KEYID_PREFIX, SimBackend

    try:
        report = args.report.read_bytes()
    except OSError as e:
        raise GeodeError(f"cannot read: {e.strerror}", where=str(args.report)) from None
    try:
        body, keyid, _ = split_report(report)
    except FormatError as e:
        raise GeodeError(str(e), where=str(args.report)) from None
    target = _identity(args.sig)
    ok = SimBackend(target).verify_report(report, target)
    fields = ReportBody.unpack(body)
    out = {
        "verified": ok,
        "simulated": keyid.startswith(SIM_KEYID_PREFIX),
        "target_mr_enclave": target.measurement.hex(),
        "mr_enclave": fields.mr_enclave.hex(),
        "mr_signer": fields.mr_signer.hex(),
        "isv_prod_id": fields.isv_prod_id,
        "isv_svn": fields.isv_svn,
        "debug": fields.debug,
        "report_data": fields.report_data.hex(),
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for key, value in out.items():
            print(f"{key}: {value}")
        print("verified: the MAC checks for this target" if ok else
              "NOT verified: the MAC does not check for this target on this installation")
    return 0 if ok else 1


def _add_tee(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("sim-collateral", help="write the collateral that verifies sim quotes",
                       description="write TCB info, QE identity, CRLs and the simulation root "
                       "CA of this installation's sim TEE into DIR (all marked simulated)")
    p.add_argument("dir", type=Path, metavar="DIR")
    p.set_defaults(_action=_run_collateral)

    p = sub.add_parser("report-data", help="the report data of a tdx/snp quote",
                       description="print (hex) the 64-byte report data a tdx/snp quote "
                       "carries for a measurement and user_report_data")
    p.add_argument("--measurement", type=_hex, metavar="HEX", help="the Geode measurement")
    p.add_argument("--sig", type=Path, metavar="APP.sig",
                   help="take the measurement from this SIGSTRUCT")
    p.add_argument("--user-data", type=_hex, default=b"", metavar="HEX",
                   help="what the program wrote to /dev/attestation/user_report_data")
    p.set_defaults(_action=_run_report_data)

    p = sub.add_parser("verify-report", help="check a sim REPORT's MAC for its target",
                       description="local attestation on the host: exit 0 when the 432-byte "
                       "REPORT was made by this installation's sim TEE for the enclave whose "
                       "SIGSTRUCT is given")
    p.add_argument("report", type=Path, metavar="REPORT")
    p.add_argument("--sig", type=Path, required=True, metavar="TARGET.sig",
                   help="SIGSTRUCT of the targeted enclave")
    p.add_argument("--json", action="store_true")
    p.set_defaults(_action=_run_verify_report)


def _run_tee(args: argparse.Namespace) -> int:
    result: int = args._action(args)
    return result


COMMAND = Command("tee", "TEE backend tools: sim collateral, tdx/snp report data, sim "
                  "report check", _add_tee, _run_tee)
