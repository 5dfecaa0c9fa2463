"""Bad input: one line on stderr naming the problem, non-zero exit, no traceback, no files."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from geodetest import run

GOOD = """\
libos.entrypoint = "/app"
fs.mounts = [{ path = "/app", uri = "file:app" }]
sgx.trusted_files = ["file:app"]
"""


def assert_clean_failure(proc, *needles: str) -> None:  # type: ignore[no-untyped-def]
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture
def app(tmp_path: Path) -> Path:
    (tmp_path / "app").write_text("#!/bin/sh\n")
    return tmp_path


def render(app: Path, env: dict[str, str], template: str, *defines: str):  # type: ignore[no-untyped-def]
    (app / "t.manifest.template").write_text(template)
    return run(["gramine-manifest", *defines, "t.manifest.template", "t.manifest"], env,
               cwd=app, check=False)


def test_malformed_toml(app: Path, geode_env: dict[str, str]) -> None:
    proc = render(app, geode_env, GOOD + "sgx.debug = = true\n")
    assert_clean_failure(proc, "t.manifest.template")
    assert not (app / "t.manifest").exists()


def test_undefined_template_variable(app: Path, geode_env: dict[str, str]) -> None:
    proc = render(app, geode_env, GOOD + 'loader.log_level = "{{ log_levle }}"\n')
    assert_clean_failure(proc, "log_levle", "t.manifest.template")
    assert not (app / "t.manifest").exists()


def test_unknown_key(app: Path, geode_env: dict[str, str]) -> None:
    proc = render(app, geode_env, GOOD + "sgx.enclave_sise = \"256M\"\n")
    assert_clean_failure(proc, "sgx.enclave_sise")
    assert not (app / "t.manifest").exists()


def test_mistyped_key(app: Path, geode_env: dict[str, str]) -> None:
    proc = render(app, geode_env, GOOD + "sgx.max_threads = \"four\"\n")
    assert_clean_failure(proc, "sgx.max_threads")


def test_missing_entrypoint(app: Path, geode_env: dict[str, str]) -> None:
    proc = render(app, geode_env, GOOD.replace('libos.entrypoint = "/app"\n', ""))
    assert_clean_failure(proc, "libos.entrypoint")


def test_missing_trusted_file(app: Path, geode_env: dict[str, str]) -> None:
    proc = render(app, geode_env, GOOD.replace('"file:app"]', '"file:app", "file:nope"]'))
    assert_clean_failure(proc, "nope")
    assert not (app / "t.manifest").exists()


def test_trusted_file_changed_after_render(app: Path, geode_env: dict[str, str]) -> None:
    assert render(app, geode_env, GOOD).returncode == 0
    (app / "app").write_text("#!/bin/sh\necho tampered\n")
    proc = run(["gramine-sgx-sign", "-m", "t.manifest", "-o", "t.manifest.sgx"], geode_env,
               cwd=app, check=False)
    assert_clean_failure(proc, "app")
    assert not (app / "t.manifest.sgx").exists() and not (app / "t.sig").exists()


def test_trusted_file_vanished_after_render(app: Path, geode_env: dict[str, str]) -> None:
    assert render(app, geode_env, GOOD).returncode == 0
    (app / "app").unlink()
    proc = run(["gramine-sgx-sign", "-m", "t.manifest", "-o", "t.manifest.sgx"], geode_env,
               cwd=app, check=False)
    assert_clean_failure(proc, "app")
    assert not (app / "t.manifest.sgx").exists() and not (app / "t.sig").exists()


def _write_key(path: Path, key) -> Path:  # type: ignore[no-untyped-def]
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


@pytest.mark.parametrize("kind", ["rsa2048", "e65537", "ec", "garbage", "missing"])
def test_bad_signing_key(kind: str, app: Path, geode_env: dict[str, str]) -> None:
    assert render(app, geode_env, GOOD).returncode == 0
    key = app / "key.pem"
    if kind == "rsa2048":
        _write_key(key, rsa.generate_private_key(3, 2048))
    elif kind == "e65537":
        _write_key(key, rsa.generate_private_key(65537, 3072))
    elif kind == "ec":
        _write_key(key, ec.generate_private_key(ec.SECP384R1()))
    elif kind == "garbage":
        key.write_text("not a key\n")
    proc = run(["gramine-sgx-sign", "-k", str(key), "-m", "t.manifest", "-o", "t.manifest.sgx"],
               geode_env, cwd=app, check=False)
    assert_clean_failure(proc, "key.pem")
    assert not (app / "t.manifest.sgx").exists() and not (app / "t.sig").exists()


def test_unwritable_output_dir(app: Path, geode_env: dict[str, str]) -> None:
    assert render(app, geode_env, GOOD).returncode == 0
    proc = run(["gramine-sgx-sign", "-m", "t.manifest", "-o", "/proc/t.manifest.sgx"],
               geode_env, cwd=app, check=False)
    assert_clean_failure(proc, "/proc")
    assert not (app / "t.sig").exists()
    proc = run(["gramine-manifest", "t.manifest.template", "/nonexistent/dir/t.manifest"],
               geode_env, cwd=app, check=False)
    assert_clean_failure(proc, "/nonexistent/dir")


def test_signature_checks_detect_tampering(app: Path, geode_env: dict[str, str]) -> None:
    assert render(app, geode_env, GOOD).returncode == 0
    run(["gramine-sgx-sign", "-q", "-m", "t.manifest", "-o", "t.manifest.sgx"], geode_env,
        cwd=app)
    ok = run(["geode", "sigstruct", "verify", "t.sig", "--manifest", "t.manifest.sgx"],
             geode_env, cwd=app, check=False)
    assert ok.returncode == 0
    data = (app / "t.manifest.sgx").read_bytes()
    (app / "t.manifest.sgx").write_bytes(data.replace(b"/app", b"/apq", 1))
    bad = run(["geode", "sigstruct", "verify", "t.sig", "--manifest", "t.manifest.sgx"],
              geode_env, cwd=app, check=False)
    assert bad.returncode == 1 and "measurement mismatch" in bad.stdout
    sig = bytearray((app / "t.sig").read_bytes())
    sig[1024] ^= 1  # ISVPRODID, inside the signed region
    (app / "t.sig").write_bytes(bytes(sig))
    bad = run(["geode", "sigstruct", "verify", "t.sig"], geode_env, cwd=app, check=False)
    assert bad.returncode == 1 and "FAIL signature" in bad.stdout


def _sandbox_helpers() -> set[int]:
    """Live processes titled as Geode's sandbox helpers (C and PID 1)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                title = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[0]
                if title in (b"geode-sandbox", b"geode-init"):
                    found.add(int(entry))
    return found


def test_a_refused_signed_manifest_leaves_no_helper(app: Path, geode_env: dict[str, str]
                                                    ) -> None:
    """gramine-direct forks the sandbox's helpers before it reads the manifest: when the
    manifest is refused, they are gone with the command."""
    assert render(app, geode_env, GOOD).returncode == 0
    run(["gramine-sgx-sign", "-q", "-m", "t.manifest", "-o", "t.manifest.sgx"], geode_env,
        cwd=app)
    data = (app / "t.manifest.sgx").read_bytes()
    (app / "t.manifest.sgx").write_bytes(data.replace(b"/app", b"/apq", 1))
    before = _sandbox_helpers()
    proc = run(["gramine-direct", "t"], geode_env, cwd=app, check=False)
    assert_clean_failure(proc, "measurement mismatch", "t.sig")
    deadline = time.monotonic() + 5  # (PID 1 dies of its parent-death signal, just after)
    while (left := _sandbox_helpers() - before) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not left
