"""Gramine protected files v2.0: Gramine's vectors, an independent reader, model checking, attacks.

The reader in this file (``indep_decrypt``) is written from the format notes in
shared/vectors/pf/README.md with ``cryptography`` and ``struct`` only; it does not use
geode.formats.pf, so files written by Geode are checked against a second reading of the format.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.cmac import CMAC
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from geode.errors import FormatError, GeodeError
from geode.formats.pf import (
    PfError,
    PfErrorKind,
    PfIOError,
    ProtectedFile,
    decrypt_bytes,
    encrypt_bytes,
    norm_path,
)
from geode.formats.pf import file as pf_file
from geode.formats.pf import layout as L

VECTORS = Path(__file__).resolve().parents[1].parent / "shared" / "vectors" / "pf"
MANIFEST: dict[str, Any] = json.loads((VECTORS / "vectors.json").read_text())
KEY = bytes.fromhex(MANIFEST["key_hex"])
GOOD = [v for v in MANIFEST["vectors"] if v["expected"].startswith("decrypts")]
BAD = [v for v in MANIFEST["vectors"] if not v["expected"].startswith("decrypts")]
N = 4096


def pattern(n: int) -> bytes:
    """The vectors' plaintext rule: byte[i] = i % 251."""
    return bytes(i % 251 for i in range(n))


def vector_bytes(v: dict[str, Any]) -> bytes:
    return (VECTORS / v["encrypted_file"]).read_bytes()


# --- an independent reader, from the format notes only -------------------------------------------

class IndepError(Exception):
    pass


def indep_metadata(blob: bytes, kdk: bytes) -> dict[str, Any]:
    if not blob or len(blob) % N:
        raise IndepError("size")
    node0 = blob[:N]
    if node0[:8] != b"GRAFS_PF" or node0[8] != 2:
        raise IndepError("header")
    nonce, tag, flags = node0[10:42], node0[42:58], node0[58]
    kdf_in = (struct.pack("<I", 1) + b"SGX-PROTECTED-FS-METADATA-KEY" + bytes(64 - 29)
              + nonce + struct.pack("<I", 128))
    cmac = CMAC(algorithms.AES(kdk))
    cmac.update(kdf_in)
    mkey = cmac.finalize()
    try:
        plain = AESGCM(mkey).decrypt(bytes(12), node0[59:59 + 3884] + tag, None)
    except Exception as e:
        raise IndepError("metadata") from e
    return {
        "flags": flags,
        "minor": node0[9],
        "padding": node0[3943:],
        "path_field": plain[:772],
        "path": plain[:772].split(b"\0", 1)[0],
        "size": struct.unpack_from("<Q", plain, 772)[0],
        "root_key": plain[780:796],
        "root_mac": plain[796:812],
        "data": plain[812:],
        "kdf_input": kdf_in,
        "metadata_key": mkey,
        "metadata_plain": plain,
    }


def indep_decrypt(blob: bytes, kdk: bytes, path: str | None) -> bytes:
    md = indep_metadata(blob, kdk)
    if path is not None and md["path"] != path.encode():
        raise IndepError("path")
    size = md["size"]
    out = bytearray(md["data"][:min(size, 3072)])
    if size <= 3072:
        if len(blob) != N:
            raise IndepError("node count")
        return bytes(out)
    ndata = -(-(size - 3072) // N)
    if len(blob) // N != 1 + ndata + -(-ndata // 96):
        raise IndepError("node count")
    mhts: dict[int, bytes] = {}

    def node(phys: int, key: bytes, tag: bytes) -> bytes:
        try:
            return AESGCM(key).decrypt(bytes(12), blob[phys * N:(phys + 1) * N] + tag, None)
        except Exception as e:
            raise IndepError(f"node {phys}") from e

    def mht(k: int) -> bytes:
        if k not in mhts:
            if k == 0:
                mhts[0] = node(1, md["root_key"], md["root_mac"])
            else:
                parent, e = mht((k - 1) // 32), 96 + (k - 1) % 32
                mhts[k] = node(1 + 97 * k, parent[32 * e:32 * e + 16],
                               parent[32 * e + 16:32 * e + 32])
        return mhts[k]

    for d in range(ndata):
        parent, e = mht(d // 96), d % 96
        out += node(d + 2 + d // 96, parent[32 * e:32 * e + 16], parent[32 * e + 16:32 * e + 32])
    return bytes(out[:size])


def check_structure(blob: bytes, size: int, path: str) -> None:
    """What a Gramine-written file looks like once decrypted (README, 'what can be tested')."""
    md = indep_metadata(blob, KEY)
    assert blob[:8] == struct.pack("<Q", 0x46505F5346415247)
    assert (blob[8], blob[9]) == (2, 0)
    assert md["flags"] == 0
    assert md["padding"] == bytes(153)
    assert md["size"] == size
    assert md["path"] == path.encode()
    assert md["path_field"][len(path.encode()):] == bytes(772 - len(path.encode()))
    ndata = 0 if size <= 3072 else -(-(size - 3072) // N)
    assert len(blob) == N * (1 + ndata + -(-ndata // 96))


# --- Gramine's vectors ---------------------------------------------------------------------------

def test_vector_files_are_intact() -> None:
    for v in MANIFEST["vectors"]:
        blob = vector_bytes(v)
        assert len(blob) == v["encrypted_size"]
        assert hashlib.sha256(blob).hexdigest() == v["encrypted_sha256"]


@pytest.mark.parametrize("v", GOOD, ids=[v["name"] for v in GOOD])
def test_gramine_vector_decrypts(v: dict[str, Any]) -> None:
    blob = vector_bytes(v)
    key = bytes.fromhex(v["key_hex"])
    with ProtectedFile.open(io.BytesIO(blob), key=key, path=v["pf_path"], create=False,
                            readonly=True) as pf:
        assert pf.size == v["plaintext_size"]
        assert pf.path == v["observed_metadata"]["stored_path"] == v["pf_path"]
        plain = pf.read(0, pf.size + 100)
    assert hashlib.sha256(plain).hexdigest() == v["plaintext_sha256"]
    assert plain == pattern(v["plaintext_size"])
    # the same through an OS file descriptor, and in odd-sized pieces
    fd = os.open(VECTORS / v["encrypted_file"], os.O_RDONLY)
    try:
        pf = ProtectedFile.open(fd, key=key, path=v["pf_path"], create=False, readonly=True,
                                cache_nodes=4)
        pieces = [pf.read(off, 1000) for off in range(0, pf.size, 1000)]
        pf.close()
    finally:
        os.close(fd)
    assert b"".join(pieces) == plain
    # the independent reader agrees, which validates the reader itself
    assert indep_decrypt(blob, key, v["pf_path"]) == plain


@given(kdk=st.binary(min_size=16, max_size=16),
       nonces=st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=5))
def test_one_keyed_kdf_derives_like_a_fresh_cmac_every_time(kdk: bytes,
                                                            nonces: list[bytes]) -> None:
    """MetadataKdf reuses one keyed CMAC: each derivation must equal the CMAC computed from
    scratch, whatever was derived before it."""
    kdf = L.MetadataKdf(kdk)
    for nonce in nonces:
        fresh = CMAC(algorithms.AES128(kdk))
        fresh.update(L.kdf_input(nonce))
        assert kdf.derive(nonce) == fresh.finalize() == L.derive_metadata_key(kdk, nonce)


@pytest.mark.parametrize("v", GOOD, ids=[v["name"] for v in GOOD])
def test_trace_matches_kdf_and_node_plaintexts(v: dict[str, Any]) -> None:
    """Gramine's own callback trace: KDF input/output, metadata and MHT plaintexts, node keys."""
    blob = vector_bytes(v)
    key = bytes.fromhex(v["key_hex"])
    events = [json.loads(line) for line in
              (VECTORS / v["decrypt_trace"]).read_text().splitlines() if line.strip()]
    header = L.unpack_header(blob[:N])
    cmacs = [e for e in events if e["ev"] == "aes_cmac"]
    assert len(cmacs) == 1
    assert L.kdf_input(header.nonce).hex() == cmacs[0]["input"]
    metadata_key = L.derive_metadata_key(key, header.nonce)
    assert metadata_key.hex() == cmacs[0]["output"]
    for e in (e for e in events if e["ev"] == "aes_gcm_decrypt"):
        p = e["physical_node"]
        assert e["iv"] == "00" * 12 and e["aad_size"] == 0 and e["status"] == 0
        assert L.classify_physical(p)[0] == e["kind"]
        if e["kind"] == "metadata":
            assert e["key"] == metadata_key.hex()
            plain = L.decrypt_node(metadata_key, L.encrypted_part(blob[:N], header), header.mac)
            assert plain is not None and plain.hex() == e["plaintext"]
            fields, _ = L.unpack_fields(plain)
            if fields.size > 3072:
                root_key = fields.root_key
                assert root_key.hex() in {x["key"] for x in events if x.get("physical_node") == 1}
        elif e["kind"] == "mht":
            plain = L.decrypt_node(bytes.fromhex(e["key"]), blob[p * N:(p + 1) * N],
                                   bytes.fromhex(e["mac"]))
            assert plain is not None and plain.hex() == e["plaintext"]
            # every data node's key and MAC in the trace is an entry of this MHT node
            for x in events:
                if x.get("kind") == "data":
                    _, d = L.classify_physical(x["physical_node"])
                    _, slot = L.data_node_parent(d)
                    assert plain[slot:slot + 32].hex() == x["key"] + x["mac"]


@pytest.mark.parametrize("v", GOOD, ids=[v["name"] for v in GOOD])
def test_vector_structure(v: dict[str, Any]) -> None:
    check_structure(vector_bytes(v), v["plaintext_size"], v["pf_path"])


def test_tampered_data_node_never_yields_its_bytes() -> None:
    (v,) = [v for v in BAD if v["name"] == "tamper_data_node"]
    blob = vector_bytes(v)
    with ProtectedFile.open(io.BytesIO(blob), key=KEY, path=v["pf_path"], create=False,
                            readonly=True) as pf:
        assert pf.size == 100000
        assert pf.read(0, 3072) == pattern(3072)  # the metadata node's bytes are intact
        for offset, size in ((0, 4096), (3072, 1), (5000, 10), (0, 100000)):
            with pytest.raises(PfError) as err:
                pf.read(offset, size)
            assert err.value.kind is PfErrorKind.CORRUPT_NODE and err.value.node == 2
        assert pf.read(7168, 4096) == pattern(11264)[7168:]  # other nodes still authenticate
    with pytest.raises(PfError, match="physical node 2"):
        decrypt_bytes(blob, key=KEY, path=v["pf_path"])
    with pytest.raises(IndepError):
        indep_decrypt(blob, KEY, v["pf_path"])


def test_two_stage_append_rewrites_the_same_nodes_as_gramine() -> None:
    """Reopen stage 1 and append 7000 bytes as Gramine's driver did: nodes 0-4 change."""
    stage1 = (VECTORS / "two_stage.stage1.pf").read_bytes()
    buf = io.BytesIO(stage1)
    with ProtectedFile.open(buf, key=KEY, path="/data/two_stage", create=False) as pf:
        for off in range(5000, 12000, 4096):
            pf.write(off, pattern(12000)[off:min(off + 4096, 12000)])
    out = buf.getvalue()
    assert indep_decrypt(out, KEY, "/data/two_stage") == pattern(12000)
    gramine = (VECTORS / "two_stage.pf").read_bytes()
    assert len(out) == len(gramine)
    changed = [p for p in range(len(out) // N) if p * N >= len(stage1)
               or out[p * N:(p + 1) * N] != stage1[p * N:(p + 1) * N]]
    assert changed == [0, 1, 2, 3, 4]


def test_reencrypting_a_vector_round_trips_through_its_key_and_path() -> None:
    for v in GOOD:
        plain = pattern(v["plaintext_size"])
        blob = encrypt_bytes(plain, key=KEY, path=v["pf_path"])
        check_structure(blob, len(plain), v["pf_path"])
        assert indep_decrypt(blob, KEY, v["pf_path"]) == plain
        assert blob != vector_bytes(v)  # fresh nonce and node keys every time


# --- files Geode writes --------------------------------------------------------------------------

SIZES = [0, 1, 3071, 3072, 3073, 4096, 7168, 7169, 3072 + 96 * N, 3072 + 96 * N + 1,
         3072 + 97 * N, 100000, 1 << 20]


@pytest.mark.parametrize("size", SIZES)
def test_geode_output_reads_with_the_independent_reader(size: int) -> None:
    plain = os.urandom(size)
    blob = encrypt_bytes(plain, key=KEY, path="/data/geode")
    check_structure(blob, size, "/data/geode")
    assert indep_decrypt(blob, KEY, "/data/geode") == plain
    md = indep_metadata(blob, KEY)
    if size <= 3072:  # never grew past the metadata node: no root MHT
        assert md["root_key"] == md["root_mac"] == bytes(16)
        assert md["data"][size:] == bytes(3072 - size)


def test_multi_level_mht_tree() -> None:
    """More than 96 * 33 data nodes need a second MHT level (MHT 33 hangs from MHT 1)."""
    size = 3072 + (96 * 33 + 5) * N
    buf = io.BytesIO()
    with ProtectedFile.open(buf, key=KEY, path="/big", create=True, cache_nodes=16) as pf:
        pf.write(size - 5, b"tail!")  # a hole: every node before is written as zeros
        pf.write(5000, b"head")
    blob = buf.getvalue()
    expect = bytearray(size)
    expect[5000:5004] = b"head"
    expect[size - 5:] = b"tail!"
    assert indep_decrypt(blob, KEY, "/big") == bytes(expect)
    with ProtectedFile.open(io.BytesIO(blob), key=KEY, path="/big", create=False,
                            readonly=True, cache_nodes=4) as pf:
        assert pf.read(size - 10, 100) == bytes(5) + b"tail!"
        assert pf.read(3072 + 96 * 33 * N - 2, 4) == bytes(4)


def test_flush_on_eviction_keeps_the_file_consistent() -> None:
    """With a tiny cache, write-backs happen mid-write; the host always holds a valid file."""
    buf = io.BytesIO()
    pf = ProtectedFile.open(buf, key=KEY, path="/e", create=True, cache_nodes=4)
    pf.write(0, pattern(200_000))
    snapshot = buf.getvalue()  # some prefix was written back by eviction
    got = indep_decrypt(snapshot, KEY, "/e")
    assert got == pattern(200_000)[:len(got)]
    pf.close()
    assert indep_decrypt(buf.getvalue(), KEY, "/e") == pattern(200_000)


def test_large_caches_write_back_in_batches() -> None:
    """A big cache still writes back every WRITE_BACK_BATCH dirty data nodes, each batch
    leaving a valid file of the size written so far; with a recovery file (a sync per write-back)
    only a full cache forces one."""
    batch = pf_file.WRITE_BACK_BATCH
    data = pattern(3072 + (batch + 40) * N)
    buf = io.BytesIO()
    pf = ProtectedFile.open(buf, key=KEY, path="/b", create=True, cache_nodes=4096)
    pf.write(0, data)
    got = indep_decrypt(buf.getvalue(), KEY, "/b")
    assert len(got) == 3072 + batch * N and data.startswith(got)
    pf.close()
    assert indep_decrypt(buf.getvalue(), KEY, "/b") == data

    buf, journal = io.BytesIO(), io.BytesIO()
    with ProtectedFile.open(buf, key=KEY, path="/b", create=True) as pf:
        pass
    pf = ProtectedFile.open(buf, key=KEY, path="/b", create=False, cache_nodes=4096,
                            recovery=journal)
    pf.write(0, data)
    assert indep_decrypt(buf.getvalue(), KEY, "/b") == b""
    pf.close()
    assert indep_decrypt(buf.getvalue(), KEY, "/b") == data


def test_v1_files_are_read_and_migrated_to_v2() -> None:
    blob = bytearray(encrypt_bytes(pattern(9000), key=KEY, path="/old"))
    v1 = blob[:8] + bytes([1, 0]) + blob[10:58] + blob[59:59 + 3884]
    blob[:N] = v1.ljust(N, b"\0")
    assert decrypt_bytes(bytes(blob), key=KEY, path="/old") == pattern(9000)
    buf = io.BytesIO(bytes(blob))
    ProtectedFile.open(buf, key=KEY, path="/old", create=False).close()
    assert buf.getvalue()[8] == 2
    assert indep_decrypt(buf.getvalue(), KEY, "/old") == pattern(9000)


# --- API behaviour -------------------------------------------------------------------------------

def test_grow_with_holes_truncate_and_stale_bytes() -> None:
    buf = io.BytesIO()
    with ProtectedFile.open(buf, key=KEY, path="/h", create=True) as pf:
        pf.write(0, b"\xff" * 10000)
        pf.truncate(2000)  # leaves stale 0xff after 2000 in the metadata node and node 0
        assert pf.size == 2000
        pf.write(9000, b"x")  # the gap must read as zeros, not the stale bytes
        assert pf.read(0, 20000) == b"\xff" * 2000 + bytes(7000) + b"x"
        pf.truncate(5000)
        pf.truncate(8000)
        assert pf.read(0, 20000) == b"\xff" * 2000 + bytes(6000)
    assert indep_decrypt(buf.getvalue(), KEY, "/h") == b"\xff" * 2000 + bytes(6000)
    assert len(buf.getvalue()) == 4 * N  # metadata, root MHT, 2 data nodes


def test_truncate_cuts_the_host_file_like_gramine() -> None:
    buf = io.BytesIO()
    with ProtectedFile.open(buf, key=KEY, path="/t", create=True) as pf:
        pf.write(0, pattern(500_000))
        for size in (400_000, 3072 + 96 * N, 3073, 3072, 0):
            pf.truncate(size)
            assert len(buf.getvalue()) == N * L.physical_node_count(size)
            assert indep_decrypt(buf.getvalue(), KEY, "/t") == pattern(size)
        pf.write(0, b"again")
    assert indep_decrypt(buf.getvalue(), KEY, "/t") == b"again"


def test_rename_rebinds_the_path() -> None:
    buf = io.BytesIO()
    with ProtectedFile.open(buf, key=KEY, path="/a/old", create=True) as pf:
        pf.write(0, b"hello")
        pf.rename("/a/new")
        assert pf.path == "/a/new"
    assert indep_decrypt(buf.getvalue(), KEY, "/a/new") == b"hello"
    with pytest.raises(PfError) as err:
        ProtectedFile.open(io.BytesIO(buf.getvalue()), key=KEY, path="/a/old", create=False)
    assert err.value.kind is PfErrorKind.PATH_MISMATCH
    assert "'/a/new'" in str(err.value) and "'/a/old'" in str(err.value)


def test_usage_errors() -> None:
    blob = encrypt_bytes(b"data", key=KEY, path="/u")
    with pytest.raises(GeodeError, match="16 bytes"):
        ProtectedFile.open(io.BytesIO(blob), key=b"short", path="/u", create=False)
    with pytest.raises(GeodeError, match="path is too long"):
        ProtectedFile.open(io.BytesIO(), key=KEY, path="/" + "x" * 771, create=True)
    ok = "/" + "x" * 770  # 771 bytes + NUL fills the 772-byte field
    assert decrypt_bytes(encrypt_bytes(b"1", key=KEY, path=ok), key=KEY, path=ok) == b"1"
    with pytest.raises(GeodeError, match="needed to create"):
        ProtectedFile.open(io.BytesIO(), key=KEY, path=None, create=True)
    pf = ProtectedFile.open(io.BytesIO(blob), key=KEY, path="/u", create=False, readonly=True)
    with pytest.raises(GeodeError, match="read-only"):
        pf.write(0, b"x")
    with pytest.raises(GeodeError, match="read-only"):
        pf.truncate(0)
    pf.close()
    pf.close()
    with pytest.raises(GeodeError, match="closed"):
        pf.read(0, 1)
    assert decrypt_bytes(blob, key=KEY, path=None) == b"data"  # no path check asked


def test_writes_through_an_fd_and_random_offsets_match_a_bytearray(tmp_path: Path) -> None:
    target = tmp_path / "f.pf"
    fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o600)
    model = bytearray()
    try:
        pf = ProtectedFile.open(fd, key=KEY, path=str(target), create=True, cache_nodes=8)
        rnd = __import__("random").Random(7)
        for _ in range(300):
            off = rnd.randrange(0, 600_000)
            data = os.urandom(rnd.choice([1, 100, 4096, 5000, 40_000]))
            pf.write(off, data)
            if off > len(model):
                model.extend(bytes(off - len(model)))
            model[off:off + len(data)] = data
            if rnd.random() < 0.1:
                pf.flush(sync=True)
        assert pf.read(0, len(model)) == bytes(model)
        pf.close()
    finally:
        os.close(fd)
    assert indep_decrypt(target.read_bytes(), KEY, str(target)) == bytes(model)


# --- attacks -------------------------------------------------------------------------------------

def sample_file(size: int = 3072 + 100 * N + 123) -> tuple[bytes, bytes]:
    """A file with every node kind: metadata, root MHT, a child MHT (physical 98), data."""
    plain = os.urandom(size)
    return encrypt_bytes(plain, key=KEY, path="/s"), plain


def try_decrypt(blob: bytes, key: bytes = KEY, path: str | None = "/s") -> bytes | PfError:
    try:
        return decrypt_bytes(blob, key=key, path=path)
    except PfError as e:
        return e


def flip(blob: bytes, offset: int, mask: int = 1) -> bytes:
    b = bytearray(blob)
    b[offset] ^= mask
    return bytes(b)


@pytest.mark.parametrize("where,kind", [
    (0, PfErrorKind.NOT_PROTECTED),  # file_id
    (8, PfErrorKind.VERSION),  # major version
    (11, PfErrorKind.WRONG_KEY),  # nonce -> another metadata key
    (45, PfErrorKind.WRONG_KEY),  # metadata MAC
    (58, PfErrorKind.RECOVERY_NEEDED),  # pending-write flag without a recovery file
    (100, PfErrorKind.WRONG_KEY),  # encrypted metadata
    (3942, PfErrorKind.WRONG_KEY),  # last encrypted byte
    (N + 5, PfErrorKind.CORRUPT_NODE),  # root MHT node
    (98 * N + 7, PfErrorKind.CORRUPT_NODE),  # child MHT node
    (2 * N + 4095, PfErrorKind.CORRUPT_NODE),  # first data node
    (101 * N, PfErrorKind.CORRUPT_NODE),  # a data node under the child MHT
])
def test_flipped_bit_in_each_node_kind(where: int, kind: PfErrorKind) -> None:
    blob, _ = sample_file()
    for mask in (0x01,) if where == 58 else (0x01, 0x80):
        got = try_decrypt(flip(blob, where, mask))
        assert isinstance(got, PfError) and got.kind is kind, got
        assert "\n" not in str(got) and str(got).startswith("/s: ")


def test_flipped_feature_flags_and_padding() -> None:
    blob, plain = sample_file()
    got = try_decrypt(flip(blob, 58, 0x02))
    assert isinstance(got, PfError) and got.kind is PfErrorKind.FLAGS
    # the padding is not authenticated (as in Gramine): changing it changes nothing
    assert try_decrypt(flip(blob, 4000)) == plain


def test_swapped_nodes() -> None:
    blob, _ = sample_file()

    def swap(a: int, b: int) -> bytes:
        n = bytearray(blob)
        n[a * N:(a + 1) * N] = blob[b * N:(b + 1) * N]
        n[b * N:(b + 1) * N] = blob[a * N:(a + 1) * N]
        return bytes(n)

    for a, b in ((2, 3), (1, 98), (2, 98), (1, 2), (97, 99), (0, 1)):
        got = try_decrypt(swap(a, b))
        assert isinstance(got, PfError), (a, b)


def test_truncated_and_extended_files() -> None:
    blob, _ = sample_file()
    cases = {
        blob[:-N]: PfErrorKind.TRUNCATED,
        blob[:N]: PfErrorKind.TRUNCATED,
        blob + bytes(N): PfErrorKind.EXTENDED,
        blob + blob[-N:]: PfErrorKind.EXTENDED,
        blob[:-1]: PfErrorKind.NOT_PROTECTED,
        blob + b"x": PfErrorKind.NOT_PROTECTED,
        b"": PfErrorKind.NOT_PROTECTED,
    }
    for variant, kind in cases.items():
        got = try_decrypt(variant)
        assert isinstance(got, PfError) and got.kind is kind, (len(variant), got)


def test_path_binding_and_wrong_key() -> None:
    blob, plain = sample_file()
    got = try_decrypt(blob, path="/elsewhere")
    assert isinstance(got, PfError) and got.kind is PfErrorKind.PATH_MISMATCH
    assert "'/s'" in str(got) and "'/elsewhere'" in str(got)
    for other in ("/s/", "/S", "s", "/s\u00e9"):
        assert isinstance(try_decrypt(blob, path=other), PfError)
    got = try_decrypt(blob, key=bytes(16))
    assert isinstance(got, PfError) and got.kind is PfErrorKind.WRONG_KEY
    assert isinstance(got, FormatError)
    assert try_decrypt(blob, path=None) == plain


def test_rollback_of_a_node_while_open_is_detected() -> None:
    buf = io.BytesIO()
    pf = ProtectedFile.open(buf, key=KEY, path="/r", create=True, cache_nodes=4)
    pf.write(0, pattern(100_000))
    pf.flush()
    old = buf.getvalue()
    pf.write(20_000, b"new contents")
    pf.flush()
    pf.read(90_000, 5000)  # fill the small cache with other nodes
    pf.read(50_000, 5000)
    raw = bytearray(buf.getvalue())
    p = L.data_node_physical(L.data_node_index(20_000))
    raw[p * N:(p + 1) * N] = old[p * N:(p + 1) * N]  # the host rolls one node back
    buf.seek(0)
    buf.write(raw)
    with pytest.raises(PfError) as err:
        pf.read(20_000, 12)
    assert err.value.kind is PfErrorKind.CORRUPT_NODE and err.value.node == p


def test_corruption_during_a_write_fails_closed() -> None:
    blob, _ = sample_file()
    buf = io.BytesIO(flip(blob, 5 * N))
    pf = ProtectedFile.open(buf, key=KEY, path="/s", create=False)
    with pytest.raises(PfError):
        pf.write(L.data_node_offset(3) + 10, b"partial overwrite needs the old node")
    with pytest.raises(PfError):  # the file refuses further changes
        pf.write(0, b"x")
    with pytest.raises(PfError):
        pf.close()


# --- fuzzing -------------------------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=3 * N) | st.binary(min_size=N, max_size=N).map(
    lambda b: b"GRAFS_PF\x02\x00" + b[10:]))
def test_random_files_raise_only_pf_errors(blob: bytes) -> None:
    got = try_decrypt(blob)
    assert isinstance(got, PfError)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from([v["name"] for v in GOOD]),
       edits=st.lists(st.tuples(st.integers(0, 200_000), st.integers(1, 255)), min_size=1,
                      max_size=4),
       cut=st.one_of(st.none(), st.integers(0, 200_000)),
       extra=st.binary(max_size=2 * N))
def test_mutated_vectors_fail_or_decrypt_exactly(name: str, edits: list[tuple[int, int]],
                                                 cut: int | None, extra: bytes) -> None:
    (v,) = [v for v in GOOD if v["name"] == name]
    blob = bytearray(vector_bytes(v))
    for at, mask in edits:
        blob[at % len(blob)] ^= mask
    if cut is not None:
        del blob[cut % (len(blob) + 1):]
    blob += extra
    try:
        plain = decrypt_bytes(bytes(blob), key=KEY, path=v["pf_path"])
    except PfError:
        return
    assert plain == pattern(v["plaintext_size"])  # only unauthenticated padding may change


SAMPLE_PLAIN = os.urandom(3072 + 100 * N + 123)
SAMPLE = encrypt_bytes(SAMPLE_PLAIN, key=KEY, path="/s")


@settings(max_examples=150, deadline=None)
@given(edits=st.lists(st.tuples(st.integers(0, len(SAMPLE) - 1), st.integers(1, 255)),
                      min_size=1, max_size=3),
       swap=st.one_of(st.none(), st.tuples(st.integers(0, 104), st.integers(0, 104))))
def test_mutated_geode_files_fail_or_decrypt_exactly(edits: list[tuple[int, int]],
                                                     swap: tuple[int, int] | None) -> None:
    """Every node kind (metadata, root MHT, child MHT at 98, data) mutated or swapped."""
    blob = bytearray(SAMPLE)
    for at, mask in edits:
        blob[at] ^= mask
    if swap is not None:
        a, b = swap
        blob[a * N:(a + 1) * N], blob[b * N:(b + 1) * N] = (SAMPLE[b * N:(b + 1) * N],
                                                            SAMPLE[a * N:(a + 1) * N])
    got = try_decrypt(bytes(blob))
    assert isinstance(got, PfError) or got == SAMPLE_PLAIN


class FailingReads(io.BytesIO):
    def read(self, size: int | None = -1) -> bytes:
        raise OSError(5, "Input/output error")


def test_host_io_errors_are_reported_as_pf_io_errors() -> None:
    with pytest.raises(PfIOError) as err:
        ProtectedFile.open(FailingReads(SAMPLE), key=KEY, path="/s", create=False,
                           name="host.pf")
    assert err.value.errno == 5
    assert str(err.value) == "host.pf: read failed: Input/output error"
    assert isinstance(err.value, GeodeError)


# --- model checking against a bytearray ----------------------------------------------------------

BOUNDARIES = [0, 1, 3071, 3072, 3073, 7167, 7168, 7169, 3072 + 96 * N - 1, 3072 + 96 * N,
              3072 + 96 * N + 1, 3072 + 97 * N]
OFFSETS = st.one_of(st.integers(0, 4 * N), st.sampled_from(BOUNDARIES),
                    st.integers(0, 3072 + 110 * N))
DATA = st.one_of(st.binary(max_size=9000),
                 st.builds(lambda n, b: bytes([b]) * n, st.integers(0, 500_000),
                           st.integers(1, 255)))


class ProtectedFileModel(RuleBasedStateMachine):
    """Random reads, writes, truncations, flushes, reopens and renames vs a bytearray."""

    def __init__(self) -> None:
        super().__init__()
        self.host = io.BytesIO()
        self.model = bytearray()
        self.path = "/model/0"
        self.renames = 0
        self.pf: ProtectedFile | None = None

    # (4096: as an encrypted mount's files; large writes reach WRITE_BACK_BATCH dirty nodes)
    @initialize(cache=st.sampled_from([4, 5, 16, 64, 4096]))
    def start(self, cache: int) -> None:
        self.pf = ProtectedFile.open(self.host, key=KEY, path=self.path, create=True,
                                     cache_nodes=cache)

    @property
    def f(self) -> ProtectedFile:
        assert self.pf is not None
        return self.pf

    @rule(offset=OFFSETS, data=DATA)
    def write(self, offset: int, data: bytes) -> None:
        assert self.f.write(offset, data) == len(data)
        if data:
            if offset > len(self.model):
                self.model.extend(bytes(offset - len(self.model)))
            self.model[offset:offset + len(data)] = data

    @rule(offset=OFFSETS, nodes=st.integers(250, 300), byte=st.integers(0, 255))
    def big_write(self, offset: int, nodes: int, byte: int) -> None:
        """Enough data nodes at once for a write-back in the middle of the write."""
        self.write(offset, bytes([byte]) * (nodes * N))

    @rule(offset=OFFSETS, size=st.integers(0, 50_000) | st.just(10**9))
    def read(self, offset: int, size: int) -> None:
        assert self.f.read(offset, size) == bytes(self.model[offset:offset + size])

    @rule(size=OFFSETS)
    def truncate(self, size: int) -> None:
        self.f.truncate(size)
        if size <= len(self.model):
            del self.model[size:]
        else:
            self.model.extend(bytes(size - len(self.model)))

    @rule()
    def flush(self) -> None:
        self.f.flush()
        blob = self.host.getvalue()
        assert len(blob) == N * L.physical_node_count(len(self.model))
        assert indep_decrypt(blob, KEY, self.path) == bytes(self.model)

    @rule(cache=st.sampled_from([4, 64, 4096]))
    def reopen(self, cache: int) -> None:
        self.f.close()
        self.pf = ProtectedFile.open(self.host, key=KEY, path=self.path, create=False,
                                     cache_nodes=cache)

    @precondition(lambda self: self.renames < 3)
    @rule()
    def rename(self) -> None:
        self.renames += 1
        self.path = f"/model/{self.renames}"
        self.f.rename(self.path)

    @invariant()
    def size_matches(self) -> None:
        if self.pf is not None:
            assert self.f.size == len(self.model)

    def teardown(self) -> None:
        if self.pf is not None:
            self.f.close()
            assert indep_decrypt(self.host.getvalue(), KEY, self.path) == bytes(self.model)


ProtectedFileModel.TestCase.settings = settings(
    max_examples=60, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TestProtectedFileModel = ProtectedFileModel.TestCase


# --- recovery ------------------------------------------------------------------------------------

class CrashingFile(io.BytesIO):
    """A real in-memory file whose writes stop working after a budget: a power cut."""

    def __init__(self, data: bytes, budget: int) -> None:
        super().__init__(data)
        self.budget = budget

    def write(self, b: Any) -> int:
        if self.budget <= 0:
            raise OSError(5, "simulated crash")
        self.budget -= 1
        return super().write(b)

    def truncate(self, size: int | None = None) -> int:
        if self.budget <= 0:
            raise OSError(5, "simulated crash")
        self.budget -= 1
        return super().truncate(size)


def recovery_scenarios() -> Iterator[tuple[str, bytes, bytes]]:
    old = pattern(300_000)
    yield "overwrite", old, old[:10_000] + b"\x01" * 250_000 + old[260_000:]
    yield "append", old, old + b"\x02" * 200_000
    yield "shrink", old, old[:5000]


@pytest.mark.parametrize("name,old,new", list(recovery_scenarios()),
                         ids=[s[0] for s in recovery_scenarios()])
def test_crash_during_write_back_recovers_old_or_new(name: str, old: bytes, new: bytes) -> None:
    base = io.BytesIO()
    with ProtectedFile.open(base, key=KEY, path="/c", create=True) as pf:
        pf.write(0, old)
    original = base.getvalue()

    def mutate(pf: ProtectedFile) -> None:
        if len(new) < len(old):
            pf.truncate(len(new))
        else:
            pf.write(0, new)
        pf.close()

    outcomes = set()
    budget = 0
    while True:
        host = CrashingFile(original, budget)
        journal = CrashingFile(b"", budget)
        pf = ProtectedFile.open(host, key=KEY, path="/c", create=False, recovery=journal,
                                cache_nodes=1024)
        try:
            mutate(pf)
            crashed = False
        except GeodeError:
            crashed = True
        host.budget = journal.budget = 10**9
        # without the recovery file the crashed file is an error, never wrong plaintext
        bare = try_decrypt(host.getvalue(), path="/c")
        assert isinstance(bare, PfError) or bare in (old, new)
        after = ProtectedFile.open(host, key=KEY, path="/c", create=False, recovery=journal)
        got = after.read(0, after.size)
        after.close()
        assert got in (old, new), (budget, len(got))
        outcomes.add(got == new)
        if not crashed:
            break
        budget += 1
    assert outcomes == {False, True}


@pytest.mark.parametrize("name,old,new", list(recovery_scenarios()),
                         ids=[s[0] for s in recovery_scenarios()])
def test_crash_without_recovery_is_never_silently_wrong(name: str, old: bytes,
                                                        new: bytes) -> None:
    """Without a recovery file a crash mid-write-back may leave the file corrupt (as in
    Gramine), but opening and reading it gives the old content, the new, or an error."""
    original = encrypt_bytes(old, key=KEY, path="/c")
    errors = 0
    for budget in range(40):
        host = CrashingFile(original, budget)
        pf = ProtectedFile.open(host, key=KEY, path="/c", create=False, cache_nodes=1024)
        try:
            if len(new) < len(old):
                pf.truncate(len(new))
            pf.write(0, new)
            pf.close()
        except GeodeError:
            pass
        got = try_decrypt(host.getvalue(), path="/c")
        if isinstance(got, PfError):
            errors += 1
        else:
            assert got in (old, new), budget
    assert errors  # some crash points do corrupt the file: that is what recovery is for


def test_pending_write_without_recovery_file_is_refused() -> None:
    host = CrashingFile(encrypt_bytes(pattern(50_000), key=KEY, path="/c"), 10**9)
    journal = io.BytesIO()
    pf = ProtectedFile.open(host, key=KEY, path="/c", create=False, recovery=journal)
    pf.write(0, b"\x07" * 40_000)
    host.budget = 1  # the journal and the pending flag are written, then the power goes
    with pytest.raises(GeodeError):
        pf.close()
    host.budget = 10**9
    with pytest.raises(PfError) as err:
        ProtectedFile.open(host, key=KEY, path="/c", create=False)
    assert err.value.kind is PfErrorKind.RECOVERY_NEEDED
    with pytest.raises(PfError) as err:  # a recovery file for another key is not replayed
        ProtectedFile.open(host, key=bytes(16), path="/c", create=False, recovery=journal)
    assert err.value.kind is PfErrorKind.BAD_RECOVERY
    with ProtectedFile.open(host, key=KEY, path="/c", create=False, recovery=journal) as pf:
        assert pf.read(0, 10**6) == pattern(50_000)


# --- small pieces --------------------------------------------------------------------------------

def test_norm_path_examples() -> None:
    assert norm_path("./out//sub/../pfcrypt_5000.pf") == "out/pfcrypt_5000.pf"
    assert norm_path("//data/./f/") == "/data/f"
    assert norm_path("a/../../b") == "../b"
    assert norm_path("../x/y/../../z") == "../z"
    assert norm_path("/../a") == "/a"
    assert norm_path("/") == "/"
    assert norm_path(".") == ""
    assert norm_path("") == ""
    assert norm_path("../a/..") == ".."


def test_node_numbering_is_consistent() -> None:
    for d in range(0, 96 * 40):
        p = L.data_node_physical(d)
        assert L.classify_physical(p) == ("data", d)
    for k in range(0, 40):
        assert L.classify_physical(L.mht_node_physical(k)) == ("mht", k)
    assert L.mht_node_parent(1) == (0, 96 * 32)
    assert L.mht_node_parent(33) == (1, 96 * 32)
    assert [L.physical_node_count(s) for s in (0, 3072, 3073, 3072 + 96 * N,
                                               3072 + 96 * N + 1)] == [1, 1, 3, 98, 100]
