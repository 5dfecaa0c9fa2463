"""RA-TLS certificates made from sim (SGX-format) and TDX evidence, and their verification:
format, binding, policy variables, the legacy OID, and certificates that lie."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from ratls_helpers import make_identity

from geode.errors import GeodeError
from geode.ratls import cert as C
from geode.ratls.verify import RatlsPolicy, RatlsVerifier
from geode.tee.sim import SimBackend
from geode.tee.tsm import report_data as tsm_report_data
from geode.verify.simulation import QuotingAuthority, td_report_body


def sim_creds(seed: int = 1, **kw: object) -> tuple[C.Credentials, bytes]:
    ident = make_identity(seed)
    return C.create(C.backend_source(SimBackend(ident)), **kw), ident.measurement  # type: ignore[arg-type]


def test_certificate_shape(pkglib: Path, collateral: Path) -> None:
    creds, _ = sim_creds()
    cert = creds.cert
    assert cert.subject.rfc4514_string() == "CN=RATLS,O=GramineDevelopers,C=US"
    assert cert.issuer == cert.subject and cert.serial_number == 1
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP384R1)
    assert cert.signature_hash_algorithm is not None
    assert cert.signature_hash_algorithm.name == "sha256"
    assert cert.not_valid_before_utc == datetime(2001, 1, 1, tzinfo=UTC)
    assert cert.not_valid_after_utc == datetime(2030, 12, 31, 23, 59, 59, tzinfo=UTC)
    ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(C.OID_TAGGED_EVIDENCE))
    assert not ext.critical
    tag = cbor2.loads(ext.value.value)  # type: ignore[attr-defined]
    assert tag.tag == 60000
    quote, claims_raw = tag.value
    claims = cbor2.loads(claims_raw)
    alg, digest = cbor2.loads(claims["pubkey-hash"])
    assert alg == 1 and digest == hashlib.sha256(C.spki_der(key)).digest()
    # report_data[0:32] = SHA-256(claims): bytes 368..400 of a v3 quote (header 48 + 320)
    assert quote[48 + 320:48 + 352] == hashlib.sha256(claims_raw).digest()
    assert quote[48 + 352:48 + 384] == bytes(32)


def test_validity_from_the_environment(pkglib: Path) -> None:
    env = {C.NOT_BEFORE_ENV: "20240102030405", C.NOT_AFTER_ENV: "20250101000000"}
    creds = C.create(C.backend_source(SimBackend(make_identity(1))), env=env)
    assert creds.cert.not_valid_before_utc == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    with pytest.raises(GeodeError, match="RA_TLS_CERT_TIMESTAMP_NOT_AFTER"):
        C.validity({C.NOT_AFTER_ENV: "2030"})


def test_sim_cert_verifies_with_policy(pkglib: Path, collateral: Path) -> None:
    creds, measurement = sim_creds()
    ok = RatlsVerifier([collateral], allow_simulated=True,
                       policy=RatlsPolicy(mr_enclave=measurement.hex(), isv_prod_id=7,
                                          isv_svn_min=3)).verify_der(creds.cert_der())
    assert ok.ok, ok.reason
    assert ok.measurement == measurement.hex() and ok.kind == "sgx" and ok.simulated
    for policy, why in ((RatlsPolicy(mr_enclave="11" * 32), "policy.mr_enclave"),
                        (RatlsPolicy(isv_svn_min=4), "policy.isv_svn_min"),
                        (RatlsPolicy(isv_prod_id=8), "policy.isv_prod_id")):
        out = RatlsVerifier([collateral], allow_simulated=True, policy=policy).verify_der(
            creds.cert_der())
        assert not out.ok and out.reason.startswith(why), out.reason
    out = RatlsVerifier([collateral], policy=RatlsPolicy()).verify_der(creds.cert_der())
    assert not out.ok and "simulat" in out.reason


def test_policy_from_gramine_variables(pkglib: Path, collateral: Path) -> None:
    creds, measurement = sim_creds()
    env = {"RA_TLS_MRENCLAVE": measurement.hex(), "RA_TLS_MRSIGNER": "any",
           "RA_TLS_ISV_PROD_ID": "7", "RA_TLS_ISV_SVN": "any"}
    policy = RatlsPolicy.from_env(env)
    assert policy.mr_signer is None and policy.isv_prod_id == 7
    assert RatlsVerifier([collateral], allow_simulated=True, policy=policy).verify_der(
        creds.cert_der()).ok
    with pytest.raises(GeodeError, match="RA_TLS_ISV_SVN not set"):
        RatlsPolicy.from_env({k: v for k, v in env.items() if k != "RA_TLS_ISV_SVN"})
    with pytest.raises(GeodeError, match="not hex"):
        RatlsPolicy.from_env({**env, "RA_TLS_MRSIGNER": "zz"})
    flags = RatlsPolicy.from_env({**env, "RA_TLS_ALLOW_OUTDATED_TCB_INSECURE": "1",
                                  "RA_TLS_ALLOW_HW_CONFIG_NEEDED": "1"})
    assert flags.allowed_tcb_statuses() == {"UpToDate", "OutOfDate", "ConfigurationNeeded",
                                            "OutOfDateConfigurationNeeded"}


def test_callback_decides(pkglib: Path, collateral: Path) -> None:
    creds, measurement = sim_creds()
    seen: list[str | None] = []

    def refuse(outcome: object) -> str:
        seen.append(getattr(outcome, "measurement", None))
        return "not on my list"

    out = RatlsVerifier([collateral], allow_simulated=True, policy=RatlsPolicy(),
                        callback=refuse).verify_der(creds.cert_der())
    assert not out.ok and out.reason == "custom policy: not on my list"
    assert seen == [measurement.hex()]
    assert RatlsVerifier([collateral], allow_simulated=True, policy=RatlsPolicy(),
                         callback=lambda o: True).verify_der(creds.cert_der()).ok


def test_legacy_oid_accepted_with_a_warning(pkglib: Path, collateral: Path) -> None:
    creds, measurement = sim_creds(legacy=True)
    assert creds.cert.extensions.get_extension_for_oid(
        x509.ObjectIdentifier(C.OID_LEGACY_QUOTE))
    out = RatlsVerifier([collateral], allow_simulated=True,
                        policy=RatlsPolicy(mr_enclave=measurement.hex())).verify_der(
        creds.cert_der())
    assert out.ok and out.legacy and "legacy" in out.warnings[0]


def test_key_that_does_not_match_its_claims(pkglib: Path, collateral: Path) -> None:
    creds, _ = sim_creds()
    ext = creds.cert.extensions.get_extension_for_oid(
        x509.ObjectIdentifier(C.OID_TAGGED_EVIDENCE))
    other = ec.generate_private_key(ec.SECP384R1())
    nb, na = C.validity({})
    # the evidence and claims of the first certificate in a certificate of another key
    forged = C.build_certificate(other, C.OID_TAGGED_EVIDENCE, ext.value.value,  # type: ignore[attr-defined]
                                 not_before=nb, not_after=na)
    verifier = RatlsVerifier([collateral], allow_simulated=True, policy=RatlsPolicy())
    out = verifier.verify_der(forged.public_bytes(C.serialization.Encoding.DER))
    assert not out.ok and "pubkey-hash claim does not match" in out.reason
    # a certificate carrying the first key but signed by another: not self-signed
    bad = C.build_certificate(other, C.OID_TAGGED_EVIDENCE, ext.value.value,  # type: ignore[attr-defined]
                              not_before=nb, not_after=na, public_key=creds.key.public_key())
    out = verifier.verify_der(bad.public_bytes(C.serialization.Encoding.DER))
    assert not out.ok and "not signed by its own key" in out.reason


def test_replayed_evidence_in_a_fresh_certificate(pkglib: Path, collateral: Path) -> None:
    creds, _ = sim_creds()
    ext = creds.cert.extensions.get_extension_for_oid(
        x509.ObjectIdentifier(C.OID_TAGGED_EVIDENCE))
    quote, _ = cbor2.loads(ext.value.value).value  # type: ignore[attr-defined]
    thief = ec.generate_private_key(ec.SECP384R1())
    # new claims for the thief's key, with the old evidence: the report data binds the old
    # claims, not these
    claims = C.encode_claims(C.spki_der(thief.public_key()))
    nb, na = C.validity({})
    fresh = C.build_certificate(thief, C.OID_TAGGED_EVIDENCE, C.tagged_evidence(quote, claims),
                                not_before=nb, not_after=na)
    out = RatlsVerifier([collateral], allow_simulated=True, policy=RatlsPolicy()).verify_der(
        fresh.public_bytes(C.serialization.Encoding.DER))
    assert not out.ok and "report_data does not bind the claims" in out.reason


def test_garbage_is_refused_with_a_reason(pkglib: Path, collateral: Path) -> None:
    v = RatlsVerifier([collateral], allow_simulated=True, policy=RatlsPolicy())
    assert "not an X.509" in v.verify_der(b"garbage").reason
    assert v.verify_der(None).reason == "no client certificate"
    key = ec.generate_private_key(ec.SECP384R1())
    nb, na = C.validity({})
    for value, why in ((b"\xff\xff", "not CBOR"), (cbor2.dumps([1, 2]), "not CBOR tag 60000"),
                       (C.tagged_evidence(b"junk", C.encode_claims(C.spki_der(
                           key.public_key()))), "evidence:")):
        cert = C.build_certificate(key, C.OID_TAGGED_EVIDENCE, value, not_before=nb,
                                   not_after=na)
        out = v.verify_der(cert.public_bytes(C.serialization.Encoding.DER))
        assert not out.ok and why in out.reason, out.reason


def test_tdx_evidence_binds_through_the_geode_construction(tmp_path: Path) -> None:
    qa = QuotingAuthority()
    qa.write_collateral(tmp_path, tdx=True)
    measurement = hashlib.sha256(b"a manifest").digest()
    mr_td = bytes(range(48))

    def tdx_source(user_report_data: bytes) -> bytes:
        body = td_report_body(mr_td=mr_td, report_data=tsm_report_data(measurement,
                                                                      user_report_data))
        return qa.quote(body, version=4)

    creds = C.create(tdx_source)
    sim_root = tmp_path / "root.pem"
    sim_root.write_bytes(qa.root_cert.public_bytes(C.serialization.Encoding.PEM))
    good = RatlsPolicy(mr_enclave=measurement.hex(), mr_td=mr_td.hex())
    out = RatlsVerifier([tmp_path], allow_simulated=True, policy=good).verify_der(
        creds.cert_der())
    assert out.ok, out.reason
    assert out.kind == "tdx" and out.measurement == measurement.hex()
    for policy, why in ((RatlsPolicy(mr_enclave="22" * 32), "policy.mr_enclave"),
                        (RatlsPolicy(mr_td="33" * 48), "policy.mr_td"),
                        (RatlsPolicy(mr_signer="44" * 32), "policy.sgx_only")):
        out = RatlsVerifier([tmp_path], allow_simulated=True, policy=policy).verify_der(
            creds.cert_der())
        assert not out.ok and out.reason.startswith(why), out.reason

    def unbound(user_report_data: bytes) -> bytes:  # TDX report data without the construction
        return qa.quote(td_report_body(mr_td=mr_td, report_data=user_report_data), version=4)

    out = RatlsVerifier([tmp_path], allow_simulated=True, policy=RatlsPolicy()).verify_der(
        C.create(unbound).cert_der())
    assert not out.ok and "report_data does not bind" in out.reason


def test_nonce_claim_and_validity_window(pkglib: Path, collateral: Path) -> None:
    source = C.backend_source(SimBackend(make_identity(1)))
    creds = C.create(source, nonce=b"fresh-nonce")
    claims = cbor2.loads(cbor2.loads(creds.cert.extensions.get_extension_for_oid(
        x509.ObjectIdentifier(C.OID_TAGGED_EVIDENCE)).value.value).value[1])  # type: ignore[attr-defined]
    assert claims["nonce"] == b"fresh-nonce"
    ok = RatlsVerifier([collateral], allow_simulated=True, policy=RatlsPolicy(),
                       expected_nonce=b"fresh-nonce").verify_der(creds.cert_der())
    assert ok.ok, ok.reason
    out = RatlsVerifier([collateral], allow_simulated=True, policy=RatlsPolicy(),
                        expected_nonce=b"another").verify_der(creds.cert_der())
    assert not out.ok and "nonce" in out.reason
    expired = C.create(source, env={C.NOT_BEFORE_ENV: "20200101000000",
                                    C.NOT_AFTER_ENV: "20210101000000"})
    out = RatlsVerifier([collateral], allow_simulated=True, policy=RatlsPolicy()).verify_der(
        expired.cert_der())
    assert not out.ok and "not valid at" in out.reason
    at = datetime(2020, 6, 1, tzinfo=UTC)  # verification time inside the window
    out = RatlsVerifier([collateral], allow_simulated=True, policy=RatlsPolicy(),
                        at=at).verify_der(expired.cert_der())
    assert "not valid at" not in out.reason
