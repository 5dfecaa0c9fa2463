"""End to end: python3 in the shield (examples/python signed with gramine-sgx-sign, run with
``geode run --tee ...``) reads /dev/attestation; the evidence is checked with the geode CLI.

sim: the quote verifies with ``geode quote verify --allow-simulated --collateral DIR`` (DIR
from ``geode tee sim-collateral``) with the signed measurement and the data written, and only
then. tdx / snp: the same program against the configfs-tsm stand-in (``GEODE_TSM_DIR``)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from att_helpers import (
    Server,
    field,
    needs_fuse,
    quote_line,
    signed_python,
    sigstruct_view,
    start_standin,
)
from geodetest import run

from geode.tee.sgx import ReportBody
from geode.verify import parse_quote

pytestmark = needs_fuse

USER_DATA = bytes(range(1, 33)) + b"nonce from the verifier".ljust(32, b"\0")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, geode_env: dict[str, str]) -> Path:
    return signed_python(tmp_path_factory, geode_env)


def geode_run(app: Path, env: dict[str, str], tee: str | None, *args: str,
              check: bool = True) -> str:
    cmd = ["geode", "run", *(["--tee", tee] if tee else []), "python", *args]
    proc = run(cmd, env, cwd=app, check=check)
    return proc.stdout if check else proc.stdout + proc.stderr


def verify(quote: Path, env: dict[str, str], *args: str) -> tuple[int, dict[str, object]]:
    proc = run(["geode", "quote", "verify", str(quote), "--json", *args], env, check=False)
    return proc.returncode, json.loads(proc.stdout)


def test_sim_quote_from_the_shield_verifies_with_allow_simulated(
        app: Path, geode_env: dict[str, str], tmp_path: Path) -> None:
    out = geode_run(app, geode_env, "sim", "scripts/attestation.py", USER_DATA.hex())
    assert "attestation type: dcap" in out
    quote = tmp_path / "quote.bin"
    quote.write_bytes(quote_line(out))

    collateral = tmp_path / "collateral"
    run(["geode", "tee", "sim-collateral", str(collateral)], geode_env)
    signed = sigstruct_view(app / "python.sig", geode_env)
    measured = run(["geode", "measure", str(app / "python.manifest.sgx")],
                   geode_env).stdout.strip()
    assert signed["mr_enclave"] == measured

    code, result = verify(quote, geode_env, "--collateral", str(collateral),
                          "--allow-simulated", "--expect-mrenclave", measured,
                          "--expect-report-data", USER_DATA.hex())
    assert code == 0, result
    assert result["verified"] is True and result["simulated"] is True
    assert result["tcb_status"] == "UpToDate"
    assert result["mr_enclave"] == measured
    assert result["mr_signer"] == signed["mr_signer"]
    assert result["report_data"] == USER_DATA.hex()
    assert f"  mr_enclave:  {measured}" in out  # what the program itself parsed

    code, result = verify(quote, geode_env, "--collateral", str(collateral))
    assert code == 1 and result["verified"] is False
    failed = {c["name"] for c in result["checks"] if c["status"] == "failed"}  # type: ignore[attr-defined]
    assert "policy.simulated" in failed and "pck_chain" in failed


def test_sim_state_per_process_and_local_reports(app: Path, geode_env: dict[str, str],
                                                 tmp_path: Path) -> None:
    out = geode_run(app, geode_env, "sim", "scripts/att_procs.py")

    def report_data(name: str) -> bytes:
        return parse_quote(bytes.fromhex(field(out, name))).report_data

    assert field(out, "child-start") == "00" * 64  # a child starts with zeroes
    assert report_data("child-quote") == b"child".ljust(64, b"\0")
    assert report_data("thread-quote") == b"parent".ljust(64, b"\0")  # threads share
    assert report_data("parent-quote") == b"parent".ljust(64, b"\0")

    own = tmp_path / "self.report"
    own.write_bytes(bytes.fromhex(field(out, "report-self")))
    assert ReportBody.unpack(own.read_bytes()[:384]).report_data == b"local".ljust(64, b"\0")
    check = run(["geode", "tee", "verify-report", str(own), "--sig", str(app / "python.sig"),
                 "--json"], geode_env, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert json.loads(check.stdout)["verified"] is True
    other = tmp_path / "other.report"
    other.write_bytes(bytes.fromhex(field(out, "report-other")))
    check = run(["geode", "tee", "verify-report", str(other), "--sig", str(app / "python.sig")],
                geode_env, check=False)
    assert check.returncode == 1 and "NOT verified" in check.stdout


def test_dcap_manifest_without_a_backend_is_refused(app: Path, geode_env: dict[str, str]
                                                    ) -> None:
    for cmd in (["geode", "run", "python", "scripts/helloworld.py"],
                ["gramine-direct", "python", "scripts/helloworld.py"]):
        proc = run(cmd, geode_env, cwd=app, check=False)
        assert proc.returncode != 0 and "Hello" not in proc.stdout
        assert "sgx.remote_attestation" in proc.stderr and "--tee" in proc.stderr
        assert "Traceback" not in proc.stderr


def test_tdx_and_snp_need_configfs_tsm(app: Path, geode_env: dict[str, str],
                                       tmp_path: Path) -> None:
    env = dict(geode_env, GEODE_TSM_DIR=str(tmp_path / "missing"))
    for tee in ("tdx", "snp"):
        proc = run(["geode", "run", "--tee", tee, "python", "scripts/helloworld.py"], env,
                   cwd=app, check=False)
        assert proc.returncode == 1 and "Hello" not in proc.stdout
        assert "configfs-tsm" in proc.stderr and str(tmp_path / "missing") in proc.stderr


@pytest.fixture(params=["tdx", "snp"])
def standin(request: pytest.FixtureRequest, tmp_path: Path
            ) -> Iterator[tuple[str, Server, Path]]:
    tee = request.param
    server, out = start_standin(tmp_path, {"tdx": "tdx_guest", "snp": "sev_guest"}[tee])
    yield tee, server, out
    server.stop()


def test_tsm_evidence_from_the_shield(app: Path, geode_env: dict[str, str], tmp_path: Path,
                                      standin: tuple[str, Server, Path]) -> None:
    tee, server, standin_out = standin
    env = dict(geode_env, GEODE_TSM_DIR=str(server.mnt))
    out = geode_run(app, env, tee, "scripts/att_evidence.py", USER_DATA.hex())
    files = field(out, "files").split()
    expected = {"attestation_type", "keys", "quote", "user_report_data"}
    assert set(files) == (expected | {"certs"} if tee == "snp" else expected)
    assert field(out, "type") == ("dcap" if tee == "tdx" else "snp")
    evidence = tmp_path / "evidence.bin"
    evidence.write_bytes(quote_line(out))
    assert os.listdir(server.mnt) == []  # report instances are removed

    rd = run(["geode", "tee", "report-data", "--sig", str(app / "python.sig"), "--user-data",
              USER_DATA.hex()], geode_env).stdout.strip()
    collateral = [str(standin_out)]
    if tee == "snp":
        certs = tmp_path / "certs"
        certs.mkdir()
        (certs / "from-auxblob.pem").write_bytes(bytes.fromhex(field(out, "certs")))
        collateral.append(str(certs))
    args = [a for c in collateral for a in ("--collateral", c)]
    code, result = verify(evidence, geode_env, *args, "--allow-simulated",
                          "--expect-report-data", rd)
    assert code == 0, result
    assert result["kind"] == tee and result["report_data"] == rd
    measured = sigstruct_view(app / "python.sig", geode_env)["mr_enclave"]
    assert rd[64:] == measured  # report_data[32:64] is the measurement

    other = run(["geode", "tee", "report-data", "--sig", str(app / "python.sig")],
                geode_env).stdout.strip()
    code, result = verify(evidence, geode_env, *args, "--allow-simulated",
                          "--expect-report-data", other)
    assert code == 1  # other user data does not bind
