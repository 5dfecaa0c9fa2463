"""``geode pf`` and ``gramine-sgx-pf-crypt``: keys, files, trees, Gramine's vectors, failures."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from geode.cli import pf as pfcli
from geode.cli.common import invoke
from geode.formats.pf import PfError, decrypt_bytes

VECTORS = Path(__file__).resolve().parents[1].parent / "shared" / "vectors" / "pf"
MANIFEST: dict[str, Any] = json.loads((VECTORS / "vectors.json").read_text())
KEY = bytes.fromhex(MANIFEST["key_hex"])


def tool(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the gramine-sgx-pf-crypt entry point (``python -m geode.cli.pf``) in ``cwd``."""
    return subprocess.run([sys.executable, "-m", "geode.cli.pf", *args], cwd=cwd,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)


def geode_pf(args: list[str]) -> int:
    """Run ``geode pf ARGS`` through the command object the lead registers in main.py."""
    parser = argparse.ArgumentParser(prog="geode pf")
    pfcli.COMMAND.add_arguments(parser)
    return invoke("geode", pfcli.COMMAND.handler, parser.parse_args(args))


def pattern(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "key.bin").write_bytes(KEY)
    return tmp_path


def test_gen_key(work: Path) -> None:
    proc = tool(["gen-key", "-w", "new.key"], work)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "Wrap key saved to: new.key\n"
    key = (work / "new.key").read_bytes()
    assert len(key) == 16
    assert stat.S_IMODE((work / "new.key").stat().st_mode) == 0o600
    assert tool(["gen-key", "-w", "new.key"], work).returncode == 0
    assert (work / "new.key").read_bytes() != key


def test_encrypt_binds_and_prints_the_normalised_output_path(work: Path) -> None:
    (work / "out").mkdir()
    (work / "plain").write_bytes(pattern(5000))
    proc = tool(["encrypt", "-w", "key.bin", "-i", "plain", "-o", "./out//sub/../x.pf"], work)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "Encrypting: plain -> out/x.pf",
        '            (Gramine\'s encrypted files must contain this exact path: "out/x.pf")',
    ]
    assert listing(work / "out") == ["x.pf"]  # no temporary files left
    blob = (work / "out" / "x.pf").read_bytes()
    assert len(blob) == 3 * 4096
    assert decrypt_bytes(blob, key=KEY, path="out/x.pf") == pattern(5000)
    with pytest.raises(PfError):
        decrypt_bytes(blob, key=KEY, path="./out//sub/../x.pf")


@pytest.mark.parametrize("v", [v for v in MANIFEST["vectors"]
                               if v["expected"].startswith("decrypts")],
                         ids=lambda v: v["name"])
def test_decrypt_gramine_vectors(work: Path, v: dict[str, Any]) -> None:
    shutil.copy(VECTORS / v["encrypted_file"], work / "in.pf")
    proc = tool(["decrypt", "-w", "key.bin", "-i", "in.pf", "-o", "plain"], work)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "Decrypting: in.pf -> plain\n"
    got = (work / "plain").read_bytes()
    assert hashlib.sha256(got).hexdigest() == v["plaintext_sha256"]


def test_decrypt_verify_checks_the_input_path(work: Path) -> None:
    """pfcrypt_tool_5000.pf was made by Gramine's tool with -o ./out//sub/../pfcrypt_5000.pf."""
    (work / "out").mkdir()
    shutil.copy(VECTORS / "pfcrypt_tool_5000.pf", work / "out" / "pfcrypt_5000.pf")
    proc = tool(["decrypt", "-V", "-w", "key.bin", "-i", "./out/pfcrypt_5000.pf", "-o", "p"],
                work)
    assert proc.returncode == 0, proc.stderr
    assert (work / "p").read_bytes() == pattern(5000)
    shutil.copy(work / "out" / "pfcrypt_5000.pf", work / "moved.pf")
    proc = tool(["decrypt", "-V", "-w", "key.bin", "-i", "moved.pf", "-o", "q"], work)
    assert proc.returncode == 1
    assert proc.stderr == ("gramine-sgx-pf-crypt: error: moved.pf: file is bound to path "
                           "'out/pfcrypt_5000.pf', not 'moved.pf'\n")
    assert not (work / "q").exists()
    # without -V the path is not checked, as in Gramine
    assert tool(["decrypt", "-w", "key.bin", "-i", "moved.pf", "-o", "q"], work).returncode == 0


@pytest.mark.parametrize("case", ["wrong-key", "tampered", "not-pf", "truncated"])
def test_failed_decrypt_leaves_no_output(work: Path, case: str) -> None:
    src = VECTORS / ("tamper_data_node.pf" if case == "tampered" else "f_100000.pf")
    data = src.read_bytes()
    if case == "not-pf":
        data = b"plain text, not a protected file"
    if case == "truncated":
        data = data[:-4096]
    (work / "in.pf").write_bytes(data)
    if case == "wrong-key":
        (work / "key.bin").write_bytes(bytes(16))
    (work / "old").write_bytes(b"keep")
    before = listing(work)
    proc = tool(["decrypt", "-w", "key.bin", "-i", "in.pf", "-o", "plain"], work)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gramine-sgx-pf-crypt: error: in.pf: ")
    assert listing(work) == before  # no output file, no temporary file
    assert b"\x00\x01\x02\x03" not in proc.stdout.encode() + proc.stderr.encode()


def test_directory_trees_round_trip(work: Path) -> None:
    tree = work / "in"
    (tree / "sub" / "deeper").mkdir(parents=True)
    files = {"a": b"", "b": pattern(3072), "sub/c": pattern(10_000),
             "sub/deeper/d": os.urandom(500_000)}
    for name, data in files.items():
        (tree / name).write_bytes(data)
    os.mkfifo(tree / "fifo")
    proc = tool(["encrypt", "-w", "key.bin", "-i", "in", "-o", "enc"], work)
    assert proc.returncode == 0, proc.stderr
    assert "Skipping non-regular file in/fifo" in proc.stdout
    for name in files:
        assert f'must contain this exact path: "enc/{name}")' in proc.stdout
        assert decrypt_bytes((work / "enc" / name).read_bytes(), key=KEY,
                             path=f"enc/{name}") == files[name]
    proc = tool(["decrypt", "-V", "-w", "key.bin", "-i", "enc", "-o", "dec"], work)
    assert proc.returncode == 0, proc.stderr
    for name, data in files.items():
        assert (work / "dec" / name).read_bytes() == data
    assert listing(work / "dec") == listing(work / "enc")


def test_gramine_option_order_and_usage_errors(work: Path) -> None:
    (work / "plain").write_bytes(b"x" * 100)
    proc = tool(["-w", "key.bin", "-i", "plain", "-o", "o.pf", "encrypt"], work)
    assert proc.returncode == 0, proc.stderr
    assert decrypt_bytes((work / "o.pf").read_bytes(), key=KEY, path="o.pf") == b"x" * 100
    for args, message in [
        (["encrypt", "-i", "plain", "-o", "p.pf"], "wrap key path not specified"),
        (["encrypt", "-w", "key.bin", "-i", "plain"], "input or output path not specified"),
        (["encrypt", "-V", "-w", "key.bin", "-i", "plain", "-o", "p.pf"], "decrypt only"),
        (["encrypt", "-w", "missing.key", "-i", "plain", "-o", "p.pf"], "missing.key"),
        (["encrypt", "-w", "plain", "-i", "plain", "-o", "p.pf"], "exactly 16 bytes"),
        (["encrypt", "-w", "key.bin", "-i", "nope", "-o", "p.pf"], "nope: cannot stat"),
        (["encrypt", "-w", "key.bin", "-i", "plain", "-o", "no/dir/p.pf"], "no/dir"),
    ]:
        proc = tool(args, work)
        assert proc.returncode == 1, args
        assert len(proc.stderr.splitlines()) == 1 and message in proc.stderr, proc.stderr
    assert not (work / "p.pf").exists()
    assert tool(["frobnicate", "-w", "key.bin"], work).returncode == 2


def test_geode_pf_command(work: Path, capsys: pytest.CaptureFixture[str],
                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(work)
    assert geode_pf(["gen-key", "-w", "k2"]) == 0
    (work / "plain").write_bytes(pattern(20_000))
    assert geode_pf(["encrypt", "-w", "k2", "-i", "plain", "-o", "./e.pf", "-v"]) == 0
    out = capsys.readouterr().out
    assert 'must contain this exact path: "e.pf")' in out and "20000 bytes" in out
    assert geode_pf(["decrypt", "-w", "k2", "-i", "e.pf", "-o", "d", "-V"]) == 0
    assert (work / "d").read_bytes() == pattern(20_000)
    assert geode_pf(["decrypt", "-w", "key.bin", "-i", "e.pf", "-o", "d2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("geode: error: e.pf: ") and "wrong key" in err
    assert not (work / "d2").exists()
