"""Fuzzing: parsers raise only FormatError; the verifier and collateral loader never raise.

Random bytes, every truncation of every vector, padding, and single/multi-byte mutations of
real quotes, reports, collateral JSON and DER.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from verify_helpers import (
    AT_SGX02,
    AT_SNP,
    AT_TDX02,
    SGX01,
    SGX02,
    SGX04,
    SNP01,
    TDX01,
    TDX02,
    collateral,
)

from geode.errors import FormatError
from geode.verify import Collateral, Verifier, der, parse_quote, parse_snp_report
from geode.verify.collateral import parse_enclave_identity, parse_tcb_info

QUOTES = {
    "sgx01": (SGX01 / "quote.bin").read_bytes(),
    "sgx02": (SGX02 / "quote.bin").read_bytes(),
    "sgx04": (SGX04 / "quote.bin").read_bytes(),
    "tdx01": (TDX01 / "quote_trimmed_oasis.bin").read_bytes(),
    "tdx02": (TDX02 / "quote.bin").read_bytes(),
}
SNP = (SNP01 / "report.bin").read_bytes()
TCB_INFO = (SGX02 / "sgx_tcbinfov3_00606a000000.json").read_bytes()
TDX_TCB_INFO = (TDX02 / "tcb_info_v3_tdx_fmspc_C0806F000000.json").read_bytes()
QE_ID = (SGX02 / "sgx_qeidentity_v4.json").read_bytes()

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def _parse_any(data: bytes) -> None:
    for fn in (parse_quote, parse_snp_report):
        with contextlib.suppress(FormatError):
            fn(data)


@FUZZ
@given(st.binary(max_size=6000))
def test_random_bytes(data: bytes) -> None:
    _parse_any(data)
    with contextlib.suppress(FormatError):
        parse_quote(data, allow_trailing=True)


@FUZZ
@given(st.sampled_from(sorted(QUOTES)), st.integers(0, 5), st.binary(min_size=2, max_size=2))
def test_random_header_keeps_format_errors(name: str, pos: int, value: bytes) -> None:
    data = bytearray(QUOTES[name])
    data[pos * 2:pos * 2 + 2] = value
    _parse_any(bytes(data))


@pytest.mark.parametrize("name", sorted(QUOTES))
def test_every_truncation(name: str) -> None:
    data = QUOTES[name]
    for n in range(len(data)):
        with pytest.raises(FormatError):
            parse_quote(data[:n])


def test_every_snp_truncation() -> None:
    for n in range(len(SNP)):
        with pytest.raises(FormatError):
            parse_snp_report(SNP[:n])


@FUZZ
@given(st.sampled_from(sorted(QUOTES)), st.binary(min_size=1, max_size=200))
def test_padding_refused(name: str, pad: bytes) -> None:
    with pytest.raises(FormatError, match="trailing bytes"):
        parse_quote(QUOTES[name] + pad)
    assert parse_quote(QUOTES[name] + pad, allow_trailing=True).trailing == len(pad)


@FUZZ
@given(st.sampled_from(["sgx02", "tdx02"]),
       st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 255)), min_size=1, max_size=4))
def test_mutated_quotes_never_crash_the_verifier(name: str,
                                                 edits: list[tuple[int, int]]) -> None:
    data = bytearray(QUOTES[name])
    for pos, value in edits:
        data[pos % len(data)] = value
    at = AT_SGX02 if name == "sgx02" else AT_TDX02
    r = Verifier(collateral(name)).verify(bytes(data), at)
    changed = bytes(data) != QUOTES[name]
    if changed:
        assert r.checks  # every outcome is explained
    _parse_any(bytes(data))


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 1183), st.integers(0, 255)), min_size=1, max_size=4))
def test_mutated_snp_never_crashes_the_verifier(edits: list[tuple[int, int]]) -> None:
    data = bytearray(SNP)
    for pos, value in edits:
        data[pos] = value
    r = Verifier(collateral("snp01")).verify(bytes(data), AT_SNP)
    if bytes(data)[:0x2A0] != SNP[:0x2A0] and r.check("format") and r.check("format").passed:  # type: ignore[union-attr]
        assert not r.verified


@FUZZ
@given(st.sampled_from([TCB_INFO, TDX_TCB_INFO, QE_ID]),
       st.lists(st.tuples(st.integers(0, 7000), st.integers(0, 255)), min_size=1, max_size=3))
def test_mutated_collateral_json(raw: bytes, edits: list[tuple[int, int]]) -> None:
    data = bytearray(raw)
    for pos, value in edits:
        data[pos % len(data)] = value
    for fn in (parse_tcb_info, parse_enclave_identity):
        with contextlib.suppress(FormatError):
            fn(bytes(data))
    c = Collateral()
    c.add_bytes(bytes(data), "fuzz")  # never raises; bad input lands in c.ignored
    assert len(c.recognised) + len(c.ignored) >= 1 or data.strip() == b""


@FUZZ
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=12),
       st.sampled_from(["tcbInfo", "enclaveIdentity"]))
def test_structurally_wrong_json(value: object, member: str) -> None:
    import json

    data = json.dumps({member: value, "signature": "00" * 64}).encode()
    fn = parse_tcb_info if member == "tcbInfo" else parse_enclave_identity
    with pytest.raises(FormatError):
        fn(data)


@FUZZ
@given(st.binary(max_size=300))
def test_der_reader(data: bytes) -> None:
    try:
        for tlv in der.parse_all(data):
            if tlv.tag & 0x20:
                tlv.children()
            elif tlv.tag == der.TAG_OID:
                tlv.as_oid()
            elif tlv.tag == der.TAG_INTEGER:
                tlv.as_int()
    except FormatError:
        pass


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), min_size=1, max_size=3))
def test_mutated_pck_chain_in_collateral(edits: list[tuple[int, int]]) -> None:
    pem = bytearray((SGX01 / "tcb_info_issuer_chain.pem").read_bytes())
    for pos, value in edits:
        pem[pos % len(pem)] = value
    c = Collateral()
    c.add_bytes(bytes(pem), "chain")
    c.add_bytes((SGX01 / "tcb_info_v3_fmspc_00606A000000.json").read_bytes(), "tcb")
    Verifier(c).verify(QUOTES["sgx01"], datetime(2022, 12, 20, tzinfo=UTC))
