"""The sqlite-encrypted example step by step: a database created in one gramine-direct run
lives encrypted in the host's db/ directory, is reopened, changed and queried in later runs,
decrypts on the host with ``gramine-sgx-pf-crypt decrypt`` into a database the host's sqlite3
accepts, and is refused (never misread) once tampered with."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from geodetest import copy_example, run

from geode.formats.pf import decrypt_bytes

pytestmark = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or not os.path.exists("/usr/bin/sqlite3"),
    reason="needs FUSE and Debian's sqlite3",
)

QUERY = "SELECT count(*), sum(v) FROM kv;\n"


def shield(workdir: Path, env: dict[str, str], sql: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["gramine-direct", "sqlite3", "/db/test.db"], input=sql, text=True,
                          capture_output=True, cwd=workdir, env=env)


def test_sqlite_database_in_an_encrypted_mount(tmp_path: Path,
                                               geode_env: dict[str, str]) -> None:
    workdir = copy_example("sqlite-encrypted", tmp_path)
    run(["make", "SGX=1"], geode_env, cwd=workdir)
    key = (workdir / "wrap-key").read_bytes()
    assert len(key) == 16
    assert f'default = "{key.hex()}"' in (workdir / "sqlite3.manifest").read_text()

    created = shield(workdir, geode_env, (workdir / "scripts" / "create.sql").read_text())
    assert created.returncode == 0, created.stderr
    assert "fs.insecure__keys" in created.stderr  # the insecure banner
    host_db = workdir / "db" / "test.db"
    raw = host_db.read_bytes()
    assert len(raw) % 4096 == 0 and b"SQLite format 3" not in raw
    assert decrypt_bytes(raw, key=key, path="db/test.db").startswith(b"SQLite format 3\0")
    assert sorted(os.listdir(workdir / "db")) == ["test.db"]  # the journal was removed

    queried = shield(workdir, geode_env, QUERY)
    assert queried.returncode == 0, queried.stderr
    assert queried.stdout == "1000|333833500\n"
    changed = shield(workdir, geode_env, "BEGIN; DELETE FROM kv WHERE v % 2 = 0; "
                     "INSERT INTO kv VALUES ('extra', 7); COMMIT;\n" + QUERY)
    assert changed.returncode == 0, changed.stderr
    assert changed.stdout == "501|166666507\n"

    run(["gramine-sgx-pf-crypt", "decrypt", "-V", "-w", "wrap-key", "-i", "db/test.db",
         "-o", "plain.db"], geode_env, cwd=workdir)
    host = subprocess.run(["sqlite3", str(workdir / "plain.db")],
                          input="PRAGMA integrity_check;\n" + QUERY, text=True,
                          capture_output=True, check=True)
    assert host.stdout == "ok\n501|166666507\n"

    # a flipped bit in the stored database: the program gets an error, never wrong rows
    bad = bytearray(host_db.read_bytes())
    bad[len(bad) // 2] ^= 1
    host_db.write_bytes(bytes(bad))
    tampered = shield(workdir, geode_env, QUERY)
    assert tampered.returncode != 0 and tampered.stdout == ""
    assert "/db/test.db" in tampered.stderr
