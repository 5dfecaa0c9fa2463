"""/dev/attestation over a real FUSE mount (served from the host's pid namespace, so the
callers here are the test process, its threads and forked children): the files each backend
has, sizes, Gramine's write rules, per-process state, local attestation."""

from __future__ import annotations

import hashlib
import os
import pickle
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from att_helpers import Server, needs_fuse, start_view

from geode.formats.sigstruct import Sigstruct
from geode.runtime.attestation import Callers, ProcessTable
from geode.tee import EnclaveIdentity
from geode.tee.sgx import ReportBody, TargetInfo
from geode.tee.sim import SimBackend
from geode.verify import parse_quote

pytestmark = needs_fuse


def _sigstruct(path: Path) -> Sigstruct:
    rnd = hashlib.sha256(b"view").digest()
    sig = Sigstruct(modulus=rnd * 12, enclave_hash=hashlib.sha256(rnd).digest(), isv_prod_id=5,
                    isv_svn=2, attribute_flags=0x04, attribute_xfrm=0x03)
    path.write_bytes(sig.pack())
    return sig


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("GEODE_PKGLIBDIR", str(tmp_path / "pkglib"))
    return dict(os.environ)


@pytest.fixture
def sim_view(tmp_path: Path, env: dict[str, str]) -> Iterator[tuple[Server, Sigstruct]]:
    sig = _sigstruct(tmp_path / "app.sig")
    server = start_view(tmp_path, "sim", tmp_path / "app.sig", env)
    yield server, sig
    server.stop()


def read(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write(path: Path, data: bytes, flags: int = os.O_WRONLY) -> int:
    fd = os.open(path, flags)
    try:
        return os.write(fd, data)
    finally:
        os.close(fd)


def in_child(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a forked child (another process for the view); return its result."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            result: Any = ("ok", fn())
        except BaseException as e:  # noqa: BLE001
            result = ("err", repr(e))
        with os.fdopen(w, "wb") as f:
            pickle.dump(result, f)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    kind, value = pickle.loads(data)
    assert kind == "ok", value
    return value


def test_sim_files_sizes_and_modes(sim_view: tuple[Server, Sigstruct]) -> None:
    server, _ = sim_view
    att = server.mnt / "dev" / "attestation"
    assert sorted(os.listdir(att)) == ["attestation_type", "keys", "my_target_info", "quote",
                                       "report", "target_info", "user_report_data"]
    sizes = {n: os.stat(att / n).st_size for n in os.listdir(att) if n != "keys"}
    assert sizes == {"attestation_type": 4, "user_report_data": 64, "target_info": 512,
                     "my_target_info": 512, "report": 432, "quote": 0}
    assert read(att / "attestation_type") == b"dcap"
    assert len(read(att / "my_target_info")) == 512
    assert len(read(att / "report")) == 432
    for name in ("attestation_type", "my_target_info", "report", "quote"):
        with pytest.raises(PermissionError):
            write(att / name, b"x")
    assert os.access(att / "user_report_data", os.W_OK)
    assert not os.access(att / "quote", os.W_OK)


def test_user_report_data_and_target_info_follow_gramines_write_rules(
        sim_view: tuple[Server, Sigstruct]) -> None:
    att = sim_view[0].mnt / "dev" / "attestation"
    urd = att / "user_report_data"
    assert read(urd) == bytes(64)  # a new process starts with zeroes
    assert write(urd, b"short") == 5
    assert read(urd) == b"short".ljust(64, b"\0")  # zero-padded
    long = os.urandom(100)
    assert write(urd, long) == 100  # accepted, truncated
    assert read(urd) == long[:64]
    write(urd, b"new")  # a new write replaces the whole value
    assert read(urd) == b"new".ljust(64, b"\0")
    fd = os.open(urd, os.O_WRONLY)
    try:  # several writes in one open build one value
        os.write(fd, b"A" * 40)
        os.write(fd, b"B" * 40)
    finally:
        os.close(fd)
    assert read(urd) == b"A" * 40 + b"B" * 24
    os.close(os.open(urd, os.O_WRONLY | os.O_TRUNC))
    assert read(urd) == bytes(64)  # truncated to nothing: zeroes

    ti = att / "target_info"
    target = os.urandom(512)
    write(ti, target[:100])
    assert read(ti) == target[:100] + bytes(412)
    write(ti, target + b"extra")
    assert read(ti) == target

    # the report uses both; the quote uses user_report_data
    write(urd, b"for the report")
    body = ReportBody.unpack(read(att / "report")[:384])
    assert body.report_data == b"for the report".ljust(64, b"\0")
    write(urd, b"for the quote")
    assert parse_quote(read(att / "quote")).report_data == b"for the quote".ljust(64, b"\0")


def test_state_is_per_process_and_shared_by_threads(sim_view: tuple[Server, Sigstruct]
                                                    ) -> None:
    att = sim_view[0].mnt / "dev" / "attestation"
    urd = att / "user_report_data"
    write(urd, b"parent")

    def child(data: bytes) -> Callable[[], tuple[bytes, bytes, bytes]]:
        def run() -> tuple[bytes, bytes, bytes]:
            start = read(urd)
            write(urd, data)
            return start, parse_quote(read(att / "quote")).report_data, read(urd)
        return run

    a = in_child(child(b"child A"))
    b = in_child(child(b"child B"))
    assert a == (bytes(64), b"child A".ljust(64, b"\0"), b"child A".ljust(64, b"\0"))
    assert b == (bytes(64), b"child B".ljust(64, b"\0"), b"child B".ljust(64, b"\0"))
    assert read(urd) == b"parent".ljust(64, b"\0")  # untouched by the children

    seen: list[bytes] = []
    t = threading.Thread(target=lambda: (seen.append(read(urd)), write(urd, b"thread")))
    t.start()
    t.join()
    assert seen == [b"parent".ljust(64, b"\0")]  # threads share their process's state
    assert read(urd) == b"thread".ljust(64, b"\0")


def test_report_is_checkable_by_its_target(sim_view: tuple[Server, Sigstruct],
                                           tmp_path: Path) -> None:
    att = sim_view[0].mnt / "dev" / "attestation"
    sig = sim_view[1]
    me = EnclaveIdentity(sig.enclave_hash, sig)
    mine = read(att / "my_target_info")
    assert TargetInfo.unpack(mine).mr_enclave == sig.enclave_hash

    other = EnclaveIdentity(hashlib.sha256(b"other").digest(), Sigstruct(
        modulus=os.urandom(384), enclave_hash=hashlib.sha256(b"other").digest()))
    verifier = SimBackend(other)  # the targeted party, on the same installation
    write(att / "target_info", verifier.my_target_info())
    write(att / "user_report_data", b"to the other enclave")
    report = read(att / "report")
    assert verifier.verify_report(report, other)
    assert not verifier.verify_report(report, me)
    assert ReportBody.unpack(report[:384]).mr_enclave == sig.enclave_hash

    write(att / "target_info", mine)  # a report for oneself
    assert verifier.verify_report(read(att / "report"), me)


def test_none_backend_has_type_and_keys_only(tmp_path: Path, env: dict[str, str]) -> None:
    server = start_view(tmp_path, "none", env=env)
    try:
        att = server.mnt / "dev" / "attestation"
        assert sorted(os.listdir(att)) == ["attestation_type", "keys"]
        assert read(att / "attestation_type") == b"none"
        for name in ("quote", "report", "user_report_data"):
            with pytest.raises(FileNotFoundError):
                read(att / name)
    finally:
        server.stop()


def test_callers_map_threads_to_their_process_and_drop_dead_ones() -> None:
    callers = Callers()
    me = callers.process(os.getpid())
    assert me is not None and me[0] == os.getpid()
    found: list[object] = []
    t = threading.Thread(target=lambda: found.append(
        (threading.get_native_id(), callers.process(threading.get_native_id()))))
    t.start()
    t.join()
    assert found[0][0] != os.getpid() and found[0][1] == me  # a thread names its process

    table = ProcessTable(callers)
    table.get(os.getpid()).user_report_data = b"x" * 64
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.read(r, 1)
        os._exit(0)
    child = callers.process(pid)
    assert child is not None and child != me
    table.get(pid).user_report_data = b"c" * 64
    assert len(table) == 2
    os.write(w, b"x")
    os.waitpid(pid, 0)
    os.close(r)
    os.close(w)
    assert callers.process(pid) is None  # gone: a recycled pid would get a new start time
    assert not callers.alive(child)
    pid2 = os.fork()  # a new process appears: the dead one's state is dropped
    if pid2 == 0:
        os._exit(0)
    try:
        assert table.get(pid2).user_report_data == bytes(64)
        assert len(table) == 2 and table.get(os.getpid()).user_report_data == b"x" * 64
    finally:
        os.waitpid(pid2, 0)
    assert callers.process(-1) is None and callers.process(0) is None
