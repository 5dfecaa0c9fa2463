"""AES-128-GCM of protected-file nodes: the C module, its pure-Python stand-in and
``cryptography``'s AESGCM give the same bytes, refuse the same inputs, and a ProtectedFile
written through either reads back through the other."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from types import ModuleType

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from geode.formats.pf import ProtectedFile, gcm

IV = bytes(12)
keys_st = st.binary(min_size=16, max_size=16)


def _native() -> ModuleType:
    from geode.formats.pf import _gcm

    return _gcm


IMPLEMENTATIONS: list[tuple[str, Callable[..., bytes], Callable[..., bytearray | None],
                            Callable[..., bytes]]] = [
    ("python", gcm.py_encrypt, gcm.py_decrypt, gcm.py_encrypt_many),
]
try:
    _n = _native()
    IMPLEMENTATIONS.append(("native", _n.encrypt, _n.decrypt, _n.encrypt_many))
except ImportError:
    pass
IDS = [name for name, *_ in IMPLEMENTATIONS]


def test_the_native_module_is_built_and_used() -> None:
    """scripts/setup.sh installs a compiler and OpenSSL's headers: the optional build must
    have happened (else every encrypted file silently takes the slow path)."""
    if os.environ.get("GEODE_PF_NATIVE") == "0":
        pytest.skip("GEODE_PF_NATIVE=0")
    assert "native" in IDS
    assert gcm.NATIVE and gcm.encrypt is _native().encrypt


def test_geode_pf_native_0_selects_cryptography() -> None:
    code = "from geode.formats.pf import gcm; print(gcm.NATIVE, gcm.encrypt is gcm.py_encrypt)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=dict(os.environ, GEODE_PF_NATIVE="0")).stdout
    assert out.split() == ["False", "True"]


@pytest.mark.parametrize(("name", "encrypt", "decrypt", "many"), IMPLEMENTATIONS, ids=IDS)
@settings(max_examples=200, deadline=None)
@given(key=keys_st, plain=st.binary(max_size=9000))
def test_encrypt_is_aesgcm_and_decrypt_inverts_it(name: str, encrypt: Callable[..., bytes],
                                                  decrypt: Callable[..., bytearray | None],
                                                  many: Callable[..., bytes], key: bytes,
                                                  plain: bytes) -> None:
    sealed = encrypt(key, plain)
    assert sealed == AESGCM(key).encrypt(IV, plain, None)
    # any buffer type, including slices of bigger buffers
    assert encrypt(bytearray(key), memoryview(b"x" + plain)[1:]) == sealed
    opened = decrypt(memoryview(key), sealed[:-16], bytearray(sealed[-16:]))
    assert isinstance(opened, bytearray) and opened == plain


@pytest.mark.parametrize(("name", "encrypt", "decrypt", "many"), IMPLEMENTATIONS, ids=IDS)
@settings(max_examples=150, deadline=None)
@given(key=keys_st, plain=st.binary(max_size=600), data=st.data())
def test_any_flipped_bit_fails_authentication(name: str, encrypt: Callable[..., bytes],
                                              decrypt: Callable[..., bytearray | None],
                                              many: Callable[..., bytes], key: bytes,
                                              plain: bytes, data: st.DataObject) -> None:
    sealed = bytearray(encrypt(key, plain))
    bit = data.draw(st.integers(0, len(sealed) * 8 - 1))
    sealed[bit // 8] ^= 1 << bit % 8
    assert decrypt(key, sealed[:-16], sealed[-16:]) is None
    wrong = bytes([key[0] ^ 0x80]) + key[1:]
    assert decrypt(wrong, bytes(encrypt(key, plain))[:-16], encrypt(key, plain)[-16:]) is None


@pytest.mark.parametrize(("name", "encrypt", "decrypt", "many"), IMPLEMENTATIONS, ids=IDS)
@settings(max_examples=100, deadline=None)
@given(n=st.integers(0, 12), size=st.sampled_from([0, 1, 16, 100, 4096]), data=st.data())
def test_encrypt_many_is_each_encrypt_concatenated(name: str, encrypt: Callable[..., bytes],
                                                   decrypt: Callable[..., bytearray | None],
                                                   many: Callable[..., bytes], n: int,
                                                   size: int, data: st.DataObject) -> None:
    keys = data.draw(st.binary(min_size=16 * n, max_size=16 * n))
    plains = [bytearray(data.draw(st.binary(min_size=size, max_size=size))) for _ in range(n)]
    want = b"".join(AESGCM(keys[16 * i:16 * i + 16]).encrypt(IV, bytes(p), None)
                    for i, p in enumerate(plains))
    assert many(keys, plains) == want
    assert many(keys, tuple(memoryview(p) for p in plains)) == want


BAD_CALLS: list[tuple[str, str, tuple[object, ...], type[Exception]]] = [
    ("encrypt", "short key", (bytes(15), b"x"), ValueError),
    ("encrypt", "long key", (bytes(17), b"x"), ValueError),
    ("encrypt", "str plaintext", (bytes(16), "x"), TypeError),
    ("decrypt", "short tag", (bytes(16), b"x", bytes(15)), ValueError),
    ("decrypt", "short key", (bytes(8), b"x", bytes(16)), ValueError),
    ("decrypt", "int ciphertext", (bytes(16), 5, bytes(16)), TypeError),
    ("many", "too few keys", (bytes(16), [b"a", b"b"]), ValueError),
    ("many", "too many keys", (bytes(48), [b"a", b"b"]), ValueError),
    ("many", "unequal lengths", (bytes(32), [b"a", b"bb"]), ValueError),
    ("many", "not buffers", (bytes(32), [1, 2]), TypeError),
]


@pytest.mark.parametrize(("impl", "encrypt", "decrypt", "many"), IMPLEMENTATIONS, ids=IDS)
@pytest.mark.parametrize(("fn", "what", "args", "error"), BAD_CALLS,
                         ids=[f"{fn}-{what}" for fn, what, _, _ in BAD_CALLS])
def test_bad_arguments_raise_clear_errors(impl: str, encrypt: Callable[..., bytes],
                                          decrypt: Callable[..., bytearray | None],
                                          many: Callable[..., bytes], fn: str, what: str,
                                          args: tuple[object, ...],
                                          error: type[Exception]) -> None:
    call = {"encrypt": encrypt, "decrypt": decrypt, "many": many}[fn]
    with pytest.raises(error):
        call(*args)


def test_native_encrypt_many_runs_beside_other_threads() -> None:
    """The batch runs without the GIL: a thread mutating other buffers meanwhile neither
    blocks it nor changes its output, and the batch's own buffers stay pinned."""
    native = _native() if "native" in IDS else pytest.skip("no native module")
    keys = os.urandom(16 * 2000)
    plains = [bytearray(os.urandom(4096)) for _ in range(2000)]
    want = gcm.py_encrypt_many(keys, plains)
    stop = threading.Event()
    spins = [0]

    def busy() -> None:
        other = bytearray(64)
        while not stop.is_set():
            other[spins[0] % 64] ^= 1
            spins[0] += 1

    thread = threading.Thread(target=busy)
    thread.start()
    try:
        for _ in range(5):
            assert native.encrypt_many(keys, plains) == want
    finally:
        stop.set()
        thread.join()
    assert spins[0] > 0


@pytest.fixture(params=IDS)
def implementation(request: pytest.FixtureRequest,
                   monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name, encrypt, decrypt, many = IMPLEMENTATIONS[IDS.index(request.param)]
    monkeypatch.setattr(gcm, "encrypt", encrypt)
    monkeypatch.setattr(gcm, "decrypt", decrypt)
    monkeypatch.setattr(gcm, "encrypt_many", many)
    yield name


def _write(key: bytes, chunks: list[tuple[int, bytes]]) -> bytes:
    buf = io.BytesIO()
    with ProtectedFile.open(buf, key=key, path="/f", create=True, cache_nodes=8) as pf:
        for offset, data in chunks:
            pf.write(offset, data)
    return buf.getvalue()


def test_files_cross_between_implementations(implementation: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A file written through one implementation (several write-backs: a cache of 8 nodes)
    reads back through each, and the other way round."""
    key = os.urandom(16)
    chunks = [(0, os.urandom(5000)), (200_000, os.urandom(70_000)), (3070, b"straddle"),
              (1_000_000, os.urandom(4096 * 3 + 5))]
    blob = _write(key, chunks)
    expected = bytearray(1_000_000 + 4096 * 3 + 5)
    for offset, data in chunks:
        expected[offset:offset + len(data)] = data
    for name, encrypt, decrypt, many in IMPLEMENTATIONS:
        monkeypatch.setattr(gcm, "encrypt", encrypt)
        monkeypatch.setattr(gcm, "decrypt", decrypt)
        monkeypatch.setattr(gcm, "encrypt_many", many)
        with ProtectedFile.open(io.BytesIO(blob), key=key, path="/f", create=False,
                                readonly=True) as pf:
            assert pf.read(0, pf.size) == expected, f"written by {implementation}, read by {name}"
