"""End to end: examples/ra-tls-secret-prov built and signed, python3 in the shield under
``geode run --tee sim``. The server releases the encrypted input's key to this manifest's
measurement and the program reads its input; a server expecting another manifest's
measurement refuses and the program never starts. gramine-ratls and the self-provisioning
API run inside the shield too."""

from __future__ import annotations

import os
import shutil
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w
from geodetest import copy_example, run
from ratls_helpers import ProvServer, needs_fuse

from geode.ratls.verify import RatlsPolicy, RatlsVerifier

pytestmark = needs_fuse


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory, geode_env: dict[str, str]) -> Path:
    app = copy_example("ra-tls-secret-prov", tmp_path_factory.mktemp("ratls-example"))
    run(["make", "SGX=1", "all", "collateral"], geode_env, cwd=app)
    return app


def policy_env(measurement: str) -> dict[str, str]:
    return {"RA_TLS_MRENCLAVE": measurement, "RA_TLS_MRSIGNER": "any",
            "RA_TLS_ISV_PROD_ID": "5", "RA_TLS_ISV_SVN": "2"}


def measure(path: Path, env: dict[str, str]) -> str:
    return run(["geode", "measure", str(path)], env).stdout.strip()


@pytest.fixture
def granting(example: Path, geode_env: dict[str, str], tmp_path: Path) -> Iterator[ProvServer]:
    srv = start(example, geode_env, tmp_path, measure(example / "python.manifest.sgx",
                                                        geode_env))
    yield srv
    srv.stop()


def start(app: Path, env: dict[str, str], tmp: Path, measurement: str) -> ProvServer:
    tls = {"ca": app / "ca" / "ca.crt", "cert": app / "server" / "server.crt",
           "key": app / "server" / "server.key"}
    return ProvServer(tmp, (app / "server" / "secret.key").read_bytes(), "--collateral",
                      str(app / "collateral"), "--allow-simulated",
                      env={**env, **policy_env(measurement)}, tls=tls)


def geode_run(app: Path, env: dict[str, str], port: int, *args: str
              ) -> tuple[int, str, str]:
    proc = run(["geode", "run", "--tee", "sim", "python", *args],
               {**env, "SECRET_PROVISION_SERVERS": f"127.0.0.1:{port}"}, cwd=app, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def test_granted_for_the_right_measurement(example: Path, geode_env: dict[str, str],
                                           granting: ProvServer) -> None:
    code, out, err = geode_run(example, geode_env, granting.port, "/scripts/read-input.py")
    assert code == 0, err
    assert "input: the provisioned input" in out
    (line,) = granting.wait_lines(1)
    assert "granted" in line
    assert f"measurement={measure(example / 'python.manifest.sgx', geode_env)}" in line
    # on the host the input is ciphertext
    assert b"provisioned" not in (example / "enc" / "input.txt").read_bytes()


def test_refused_for_another_measurement(example: Path, geode_env: dict[str, str],
                                         tmp_path: Path) -> None:
    other = tmp_path / "other.manifest.sgx"
    manifest = tomllib.loads((example / "python.manifest.sgx").read_text())
    manifest["loader"]["log_level"] = "warning"  # another manifest: another measurement
    other.write_text(tomli_w.dumps(manifest))
    other_measurement = measure(other, geode_env)
    assert other_measurement != measure(example / "python.manifest.sgx", geode_env)
    srv = start(example, geode_env, tmp_path, other_measurement)
    try:
        code, out, err = geode_run(example, geode_env, srv.port, "/scripts/read-input.py")
        assert code == 1
        assert "input:" not in out  # the program never ran
        assert "secret provisioning failed" in err and "without a secret" in err
        (line,) = srv.wait_lines(1)
        assert "refused: policy.mr_enclave" in line and other_measurement in line
    finally:
        srv.stop()


def test_no_server_no_start(example: Path, geode_env: dict[str, str]) -> None:
    code, out, err = geode_run(example, geode_env, 1, "/scripts/read-input.py")
    assert code == 1 and "input:" not in out
    assert "secret provisioning failed: 127.0.0.1:1" in err


def test_gramine_ratls_and_self_provisioning_in_the_shield(
        example: Path, geode_env: dict[str, str], granting: ProvServer, tmp_path: Path) -> None:
    measurement = measure(example / "python.manifest.sgx", geode_env)
    verifier = RatlsVerifier([example / "collateral"], allow_simulated=True,
                             policy=RatlsPolicy(mr_enclave=measurement, isv_prod_id=5))
    for flag in ("-D", "-P"):
        code, out, err = geode_run(example, geode_env, granting.port, "-m", "geode.cli.ratls",
                                   flag, "/tmp/crt", "/tmp/key", "--", "/usr/bin/python3.11",
                                   "/scripts/show-cert.py", "/tmp/crt")
        assert code == 0, err
        data = bytes.fromhex(out.split("cert: ", 1)[1].split()[0])
        if flag == "-P":
            assert data.startswith(b"-----BEGIN CERTIFICATE-----")
            from cryptography import x509
            from cryptography.hazmat.primitives.serialization import Encoding

            data = x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER)
        outcome = verifier.verify_der(data)
        assert outcome.ok, outcome.reason
        assert outcome.measurement == measurement
    code, out, err = geode_run(example, geode_env, granting.port, "/scripts/self-provision.py")
    assert code == 0, err
    assert "self-provisioned 16 bytes; same as the constructor's key: True" in out
    assert shutil.which("geode")
    assert os.path.exists(example / "python.sig")


@pytest.fixture(params=["tdx", "snp"])
def standin(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """The configfs-tsm stand-in of the attestation tests (a FUSE file system playing the
    kernel and the TEE): (backend, its mount, its collateral)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "attestation"))
    from att_helpers import start_standin

    tee = request.param
    server, out = start_standin(tmp_path, {"tdx": "tdx_guest", "snp": "sev_guest"}[tee])
    yield tee, server.mnt, out
    server.stop()


def test_tdx_and_snp_evidence_provisioned(example: Path, geode_env: dict[str, str],
                                          standin: tuple[str, Path, Path],
                                          tmp_path: Path) -> None:
    tee, mnt, standin_collateral = standin
    measurement = measure(example / "python.manifest.sgx", geode_env)
    tls = {"ca": example / "ca" / "ca.crt", "cert": example / "server" / "server.crt",
           "key": example / "server" / "server.key"}
    # TDX/SNP evidence has no MRSIGNER or ISV fields: those must be "any"
    env = {**geode_env, "RA_TLS_MRENCLAVE": measurement, "RA_TLS_MRSIGNER": "any",
           "RA_TLS_ISV_PROD_ID": "any", "RA_TLS_ISV_SVN": "any"}
    srv = ProvServer(tmp_path / "srv", (example / "server" / "secret.key").read_bytes(),
                     "--collateral", str(standin_collateral), "--allow-simulated", env=env,
                     tls=tls)
    try:
        proc = run(["geode", "run", "--tee", tee, "python", "/scripts/read-input.py"],
                   {**geode_env, "GEODE_TSM_DIR": str(mnt),
                    "SECRET_PROVISION_SERVERS": f"127.0.0.1:{srv.port}"},
                   cwd=example, check=False)
        assert proc.returncode == 0, proc.stderr + srv.log.read_text()
        assert "input: the provisioned input" in proc.stdout
        (line,) = srv.wait_lines(1)
        assert f"{tee} measurement={measurement}" in line and "granted" in line
    finally:
        srv.stop()


def test_the_input_needs_the_provisioned_key(example: Path, geode_env: dict[str, str],
                                             tmp_path: Path) -> None:
    """A server that grants another 16-byte key: the program starts, the input stays shut."""
    tls = {"ca": example / "ca" / "ca.crt", "cert": example / "server" / "server.crt",
           "key": example / "server" / "server.key"}
    measurement = measure(example / "python.manifest.sgx", geode_env)
    srv = ProvServer(tmp_path, os.urandom(16), "--collateral", str(example / "collateral"),
                     "--allow-simulated", env={**geode_env, **policy_env(measurement)},
                     tls=tls)
    try:
        code, out, err = geode_run(example, geode_env, srv.port, "/scripts/read-input.py")
        assert code == 1
        assert "cannot open the encrypted input: Permission denied" in out
        assert "granted" in srv.wait_lines(1)[0]
    finally:
        srv.stop()


def test_https_server_in_the_shield_with_an_attested_certificate(
        example: Path, geode_env: dict[str, str]) -> None:
    """gramine-ratls as a pre-main in front of a TLS server (the nginx use): a host client
    verifies the server's certificate with the RA-TLS verifier before trusting it."""
    import socket
    import subprocess
    import time

    from geode.ratls.tls import ratls_server_client_context

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # the example's manifest provisions before start: its server must be up
    srv_tls = {"ca": example / "ca" / "ca.crt", "cert": example / "server" / "server.crt",
               "key": example / "server" / "server.key"}
    measurement = measure(example / "python.manifest.sgx", geode_env)
    prov = ProvServer(example / "prov-https", (example / "server" / "secret.key").read_bytes(),
                      "--collateral", str(example / "collateral"), "--allow-simulated",
                      env={**geode_env, **policy_env(measurement)}, tls=srv_tls)
    proc = subprocess.Popen(
        ["geode", "run", "--tee", "sim", "python", "-m", "geode.cli.ratls", "/tmp/crt",
         "/tmp/key", "--", "/usr/bin/python3.11", "/scripts/https-server.py", "/tmp/crt",
         "/tmp/key", str(port)],
        env={**geode_env, "SECRET_PROVISION_SERVERS": f"127.0.0.1:{prov.port}"},
        cwd=example, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                raw = socket.create_connection(("127.0.0.1", port), timeout=30)
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline
                time.sleep(0.1)
        with raw, ratls_server_client_context().wrap_socket(raw) as tls:
            outcome = RatlsVerifier([example / "collateral"], allow_simulated=True,
                                    policy=RatlsPolicy(mr_enclave=measurement)).verify_der(
                tls.getpeercert(binary_form=True))
            assert outcome.ok, outcome.reason
            tls.sendall(b"GET / HTTP/1.0\r\n\r\n")
            reply = b""
            while chunk := tls.recv(100):
                reply += chunk
        assert b"hello from the shield" in reply
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        prov.stop()
