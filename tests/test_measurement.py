"""The Geode measurement is reproducible, documented, and sensitive to exactly its inputs."""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from geodetest import run

from geode.measurement import (
    IDENTITY_HEADER,
    libos_path,
    measure,
    runtime_identity,
    runtime_identity_text,
)

TEMPLATE = """\
libos.entrypoint = "/app"
loader.env.GREETING = "{{ greeting }}"
fs.mounts = [
  { path = "/app", uri = "file:app" },
  { path = "/data", uri = "file:data" },
]
sgx.trusted_files = ["file:app", "file:data/"]
"""


def documented_measurement(manifest: bytes, identity_file: bytes) -> bytes:
    """docs/measurement.md section 3, written independently of geode.measurement."""
    identity = hashlib.sha256(identity_file).digest()
    return hashlib.sha256(
        b"geode-measurement/1\0" + identity + struct.pack("<Q", len(manifest)) + manifest
    ).digest()


def make_app(root: Path) -> None:
    (root / "data").mkdir()
    (root / "app").write_bytes(b"#!/bin/sh\necho app\n")
    (root / "data" / "a.txt").write_text("alpha")
    (root / "data" / "b.txt").write_text("beta")
    (root / "app.manifest.template").write_text(TEMPLATE)


def sign(root: Path, env: dict[str, str], greeting: str = "hi") -> tuple[bytes, str]:
    run(["gramine-manifest", f"-Dgreeting={greeting}", "app.manifest.template", "app.manifest"],
        env, cwd=root)
    run(["gramine-sgx-sign", "-q", "-m", "app.manifest", "-o", "app.manifest.sgx",
         "-d", "2026-01-02"], env, cwd=root)
    data = (root / "app.manifest.sgx").read_bytes()
    mr = run(["geode", "measure", "app.manifest.sgx"], env, cwd=root).stdout.strip()
    return data, mr


def test_identity_file_format() -> None:
    text = runtime_identity_text()
    lines = text.split("\n")
    assert lines[0] == IDENTITY_HEADER and lines[-1] == ""
    body = lines[1:-1]
    assert body == sorted(body, key=str.encode)
    kinds = {line.split(" ")[0] for line in body}
    assert kinds == {"python", "dist", "file"}
    pkg = Path(__import__("geode").__file__).parent
    files = {line.split(" ")[1]: line.split(" ")[2] for line in body if line.startswith("file ")}
    assert files["measurement.py"] == hashlib.sha256(
        (pkg / "measurement.py").read_bytes()).hexdigest()
    sources = [*pkg.rglob("*.py"), *pkg.rglob("*.c")]
    assert set(files) == {p.relative_to(pkg).as_posix() for p in sources}
    # the C module enters by its source, not by the library built from it
    assert files["formats/pf/_gcm.c"] == hashlib.sha256(
        (pkg / "formats/pf/_gcm.c").read_bytes()).hexdigest()
    assert not any(name.endswith(".so") for name in files)
    assert runtime_identity() == hashlib.sha256(text.encode()).digest()
    assert libos_path().read_text() == text


def test_measurement_matches_documented_algorithm(
    tmp_path: Path, geode_env: dict[str, str]
) -> None:
    make_app(tmp_path)
    data, mr = sign(tmp_path, geode_env)
    identity_file = run(["geode", "identity", "--list"], geode_env).stdout.encode()
    assert mr == documented_measurement(data, identity_file).hex()
    assert mr == measure(data).hex()


def test_measurement_reproducible_and_sensitive(tmp_path: Path, geode_env: dict[str, str]) -> None:
    make_app(tmp_path)
    data1, mr1 = sign(tmp_path, geode_env)
    # Same inputs: same bytes and measurement, even after touching mtimes.
    for f in (tmp_path / "app", tmp_path / "data" / "a.txt"):
        f.touch()
    data2, mr2 = sign(tmp_path, geode_env)
    assert (data1, mr1) == (data2, mr2)
    # A different manifest byte.
    _, mr_greet = sign(tmp_path, geode_env, greeting="hj")
    assert mr_greet != mr1
    # A trusted file's content (one byte) changes its hash and so the measurement.
    (tmp_path / "data" / "b.txt").write_text("bets")
    data3, mr3 = sign(tmp_path, geode_env)
    assert mr3 != mr1 and len({mr1, mr_greet, mr3}) == 3
    assert hashlib.sha256(b"bets").hexdigest() in data3.decode()
    # Back to the original content: back to the original measurement.
    (tmp_path / "data" / "b.txt").write_text("beta")
    assert sign(tmp_path, geode_env)[1] == mr1


def test_measurement_depends_on_runtime_identity() -> None:
    manifest = b'libos.entrypoint = "/x"\n'
    assert measure(manifest, bytes(32)) != measure(manifest, b"\1" * 32)
    with pytest.raises(ValueError):
        measure(manifest, b"short")


def _package(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    (root / "a.py").write_text("a = 1\n")
    (root / "sub" / "b.py").write_text("b = 2\n")
    (root / "sub" / "notes.txt").write_text("not code\n")
    (root / "sub" / "m.c").write_text("int m;\n")
    (root / "sub" / "m.so").write_bytes(b"\x7fELF built")


def _hashed(root: Path) -> list[tuple[str, str]]:
    return sorted((p.relative_to(root).as_posix(), hashlib.sha256(p.read_bytes()).hexdigest())
                  for p in [*root.rglob("*.py"), *root.rglob("*.c")])


def test_package_digests_are_remembered_and_follow_every_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The identity's file digests come from geode.cache while a file's size, times, inode
    and device stay the same; a file rewritten with the same size and mtime is read again
    (its ctime changed), and so are new files."""
    from geode import measurement

    root = tmp_path / "pkg"
    _package(root)
    monkeypatch.setattr(measurement, "_PACKAGE_ROOT", str(root))
    assert measurement._package_files() == _hashed(root)
    assert measurement._package_files() == _hashed(root)  # (from the cache)

    a = root / "a.py"
    before = a.stat()
    a.write_text("a = 2\n")
    os.utime(a, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert a.stat().st_size == before.st_size
    (root / "sub" / "c.py").write_text("c = 3\n")
    assert measurement._package_files() == _hashed(root)
    (root / "sub" / "b.py").unlink()
    assert measurement._package_files() == _hashed(root)


def test_the_remembered_identity_is_the_computed_one(geode_env: dict[str, str]) -> None:
    code = "from geode.measurement import runtime_identity_text as t; print(t(), end='')"
    texts = [subprocess.run([sys.executable, "-c", code], env=dict(geode_env, **extra),
                            capture_output=True, text=True, check=True).stdout
             for extra in ({"GEODE_NO_CACHE": "1"}, {}, {})]
    assert texts[0] == texts[1] == texts[2] == runtime_identity_text()
