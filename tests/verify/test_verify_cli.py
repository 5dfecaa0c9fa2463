"""``geode quote view | verify`` and ``gramine-sgx-quote-view`` through subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from verify_helpers import ROOTS, SGX01, SGX02, SGX04, SNP02, TDX01, TDX02

from geode.verify.simulation import QuotingAuthority, sgx_report_body

MRENCLAVE02 = "a4f45c39dac622cb1dd32ddb35a52ec92db41d0fa88a1c911c49e59c534f61cd"


def quote_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "geode.cli.quote", *map(str, args)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)


def alias(*args: str | Path) -> subprocess.CompletedProcess[str]:
    code = ("import sys; from geode.cli.quote import gramine_quote_view; "
            "sys.argv = ['gramine-sgx-quote-view', *sys.argv[1:]]; sys.exit(gramine_quote_view())")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=120)


def _fields(text: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line
                and not line.startswith(" "))


def test_view_sgx() -> None:
    p = quote_cli("view", SGX02 / "quote.bin")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[:6] == ["kind: sgx", f"mr_enclave: {MRENCLAVE02}",
                         "mr_signer: 8f2dbc0f9c5d3378d596974b2deed1f9"
                         "3223cc49242899f83809bcc92546132c",
                         "isv_prod_id: 0", "isv_svn: 0", "report_data: " + "00" * 64]


def test_view_tdx_json() -> None:
    p = quote_cli("view", "--json", TDX02 / "quote.bin")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert list(d)[:7] == ["kind", "mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "report_data"]
    assert d["mr_td"].startswith("91eb2b44d141d4ec")
    assert d["rtmr3"] == "00" * 48
    assert d["qe_report"]["isv_svn"] == 6


def test_view_snp() -> None:
    p = quote_cli("view", SNP02 / "report.bin")
    assert p.returncode == 0, p.stderr
    f = _fields(p.stdout)
    assert f["measurement"].startswith("a1f3930413247bb3")
    assert f["policy"] == "0x000000000003001f"
    assert f["reported_tcb"] == "0x7308000000000003"
    assert f["signing_key"] == "VCEK"
    assert p.stdout.splitlines()[1].startswith("measurement: ")


def test_gramine_alias_and_msb() -> None:
    p = alias(SGX02 / "quote.bin")
    assert p.returncode == 0, p.stderr
    assert _fields(p.stdout)["mr_enclave"] == MRENCLAVE02
    p = alias("-m", SGX02 / "quote.bin")
    assert _fields(p.stdout)["mr_enclave"] == bytes.fromhex(MRENCLAVE02)[::-1].hex()


@pytest.mark.parametrize("data,message", [
    (b"", "quote: truncated at header.version (offset 0"),
    (b"\x03\x00\x02\x00" + b"\x00" * 100, "quote: truncated at report_body (offset 48"),
    (b"garbage garbage garbage garbage garbage garbage garbage", "header.version 24935"),
])
def test_view_bad_input_is_one_line(tmp_path: Path, data: bytes, message: str) -> None:
    f = tmp_path / "q"
    f.write_bytes(data)
    p = quote_cli("view", f)
    assert p.returncode == 1
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert message in p.stderr


def test_view_padded_quote_refused_then_allowed() -> None:
    trailered = TDX01 / "quote_with_39B_trailer.dat"
    p = quote_cli("view", trailered)
    assert p.returncode == 1 and "39 trailing bytes at offset 4935" in p.stderr
    assert quote_cli("view", "--allow-trailing", trailered).returncode == 0


def test_view_missing_file() -> None:
    p = quote_cli("view", "/nonexistent/quote")
    assert p.returncode == 1 and "cannot read" in p.stderr


def _verify(*args: str | Path) -> tuple[int, dict[str, object]]:
    p = quote_cli("verify", "--json", *args)
    assert "Traceback" not in p.stderr, p.stderr
    return p.returncode, json.loads(p.stdout)


def _checks(d: dict[str, object]) -> dict[str, str]:
    return {c["name"]: c["status"] for c in d["checks"]}  # type: ignore[attr-defined,index]


SGX02_ARGS = ("--collateral", SGX02, "--collateral", ROOTS)


def test_verify_sgx02_exit_codes() -> None:
    rc, d = _verify(SGX02 / "quote.bin", *SGX02_ARGS, "--at", "2025-08-15T05:45:00Z")
    assert rc == 1  # SWHardeningNeeded is not allowed by default
    assert _checks(d)["policy.tcb_status"] == "failed"
    assert d["tcb_status"] == "SWHardeningNeeded" and d["advisory_ids"] == ["INTEL-SA-00615"]
    rc, d = _verify(SGX02 / "quote.bin", *SGX02_ARGS, "--at", "1755236700",
                    "--allow-tcb", "SWHardeningNeeded", "--expect-mrenclave", MRENCLAVE02)
    assert rc == 0, [c for c in d["checks"] if c["status"] != "passed"]  # type: ignore[attr-defined]
    assert d["verified"] is True
    for key in ("mr_enclave", "mr_signer", "isv_prod_id", "isv_svn", "report_data", "checks",
                "measurements", "kind", "debug", "simulated"):
        assert key in d
    assert d["mr_enclave"] == MRENCLAVE02


def test_verify_text_output() -> None:
    p = quote_cli("verify", SGX02 / "quote.bin", *SGX02_ARGS, "--at", "2025-08-15T05:45:00Z",
                  "--allow-tcb", "SWHardeningNeeded")
    assert p.returncode == 0
    assert p.stdout.splitlines()[-1] == ("verified: SGX, TCB status SWHardeningNeeded, "
                                         "advisories INTEL-SA-00615")
    assert "ok       pck_crl: 'Intel SGX PCK Certificate' not in the CRL" in p.stdout


@pytest.mark.parametrize("at,check", [("2030-01-01", "tcb_info_validity"),
                                      ("2025-08-01T00:00:00+00:00", "tcb_info_validity"),
                                      ("2031-01-01T00:00:00Z", "pck_crl")])
def test_verify_expired_collateral_via_at(at: str, check: str) -> None:
    rc, d = _verify(SGX02 / "quote.bin", *SGX02_ARGS, "--at", at, "--allow-tcb",
                    "SWHardeningNeeded")
    assert rc == 1 and _checks(d)[check] != "passed"


def test_verify_wrong_expectation() -> None:
    rc, d = _verify(SGX02 / "quote.bin", *SGX02_ARGS, "--at", "1755236700", "--allow-tcb",
                    "SWHardeningNeeded", "--expect-mrenclave", "00" * 32,
                    "--expect-report-data", "01")
    assert rc == 1
    assert _checks(d)["policy.mr_enclave"] == "failed"
    assert _checks(d)["policy.report_data"] == "failed"


def test_verify_eppid_refused() -> None:
    p = quote_cli("verify", SGX04 / "quote.bin", "--collateral", ROOTS, "--at", "2022-12-20")
    assert p.returncode == 1
    assert "NOT DONE certification_data: certification data type 3" in p.stdout
    assert "NOT verified" in p.stdout


def test_verify_truncated_names_the_format_check(tmp_path: Path) -> None:
    f = tmp_path / "q"
    f.write_bytes((SGX02 / "quote.bin").read_bytes()[:1000])
    rc, d = _verify(f, *SGX02_ARGS)
    assert rc == 1 and d["verified"] is False
    assert _checks(d) == {"format": "failed"}
    assert "signature_data_len 4298 at offset 432 exceeds" in d["checks"][0]["reason"]  # type: ignore[index]


def test_verify_sgx01_and_tdx() -> None:
    rc, d = _verify(SGX01 / "quote.bin", "--collateral", SGX01, "--collateral", ROOTS, "--at",
                    "1671497404", "--allow-tcb", "SWHardeningNeeded")
    assert rc == 1 and _checks(d)["pck_crl"] == "not done"
    rc, d = _verify(TDX02 / "quote.bin", "--collateral", TDX02, "--collateral",
                    SGX01 / "tcb_info_issuer_chain.pem", "--collateral", ROOTS, "--at",
                    "2024-09-02T07:43:52Z")
    assert rc == 1 and d["tcb_status"] == "UpToDate"
    assert {k for k, v in _checks(d).items() if v != "passed"} == {"pck_crl"}
    rc, d = _verify(TDX01 / "quote_trimmed_oasis.bin", "--collateral", TDX01, "--collateral",
                    ROOTS, "--at", "1687091776")
    assert rc == 1 and _checks(d)["tcb_level"] == "failed" and d["tcb_status"] is None


def test_verify_snp() -> None:
    rc, d = _verify(SNP02 / "report.bin", "--collateral", SNP02, "--collateral", ROOTS,
                    "--at", "2024-01-01", "--expect-measurement",
                    "a1f3930413247bb38cfc171579ea3c12d5fe4901f0c792f63fd75d98f1ef827c"
                    "23500644e0e692e6be917f9050d3d38c")
    assert rc == 1  # no AMD CRL among the vectors
    assert {k for k, v in _checks(d).items() if v != "passed"} == {"ark_crl"}
    assert d["measurements"]["measurement"].startswith("a1f39304")  # type: ignore[index]


def test_verify_simulated(tmp_path: Path) -> None:
    sim = QuotingAuthority()
    col = sim.write_collateral(tmp_path / "collateral")
    quote = tmp_path / "quote"
    quote.write_bytes(sim.quote(sgx_report_body(mr_enclave=b"\x07" * 32, report_data=b"hi")))
    rc, d = _verify(quote, "--collateral", col)
    assert rc == 1 and d["simulated"] is True
    assert _checks(d)["pck_chain"] == "failed" and _checks(d)["policy.simulated"] == "failed"
    rc, d = _verify(quote, "--collateral", col, "--allow-simulated", "--expect-mrenclave",
                    "07" * 32, "--expect-report-data", b"hi".hex())
    assert rc == 0, d
    assert d["simulated"] is True and d["tcb_status"] == "UpToDate"
    # the root can also be given explicitly (collateral without it)
    col2 = sim.write_collateral(tmp_path / "c2", include_root=False)
    (tmp_path / "root.pem").write_bytes(sim.root_cert.public_bytes(Encoding.PEM))
    rc, _ = _verify(quote, "--collateral", col2, "--allow-simulated")
    assert rc == 1
    rc, _ = _verify(quote, "--collateral", col2, "--allow-simulated", "--sim-root",
                    tmp_path / "root.pem")
    assert rc == 0


def test_verify_bad_arguments() -> None:
    p = quote_cli("verify", SGX02 / "quote.bin", "--at", "yesterday")
    assert p.returncode == 1 and "--at 'yesterday': not ISO-8601 or Unix seconds" in p.stderr
    p = quote_cli("verify", SGX02 / "quote.bin", "--collateral", "/nonexistent")
    assert p.returncode == 1 and "no such file or directory" in p.stderr
    p = quote_cli("verify", SGX02 / "quote.bin", "--allow-tcb", "Fine")
    assert p.returncode == 2  # argparse: invalid choice


def test_registered_in_geode_main_when_available() -> None:
    from geode.cli import main as geode_main

    if not any(c.name == "quote" for c in geode_main.COMMANDS):
        pytest.skip("geode quote is not registered in geode.cli.main yet")
    p = subprocess.run([sys.executable, "-m", "geode.cli.main", "quote", "view",
                        str(SGX02 / "quote.bin")], capture_output=True, text=True)
    assert p.returncode == 0 and MRENCLAVE02 in p.stdout
