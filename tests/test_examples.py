"""The examples render, check and sign with the gramine-* commands driven by their Makefiles,
then run in the shield (gramine-direct verifies the signed manifest before starting)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from geodetest import copy_example, run

EXAMPLES = {
    "helloworld": "helloworld",
    "python": "python",
    "bash": "bash",
    "redis": "redis-server",
    "nginx": "nginx",
    "sqlite": "sqlite3",
    "sqlite-encrypted": "sqlite3",
    "demo": "demo",
    "memcached": "memcached",
}

SERVERS = {"redis": "redis-server", "nginx": "nginx", "memcached": "memcached"}


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_example_signs_and_runs(example: str, tmp_path: Path, geode_env: dict[str, str]) -> None:
    if example in SERVERS and shutil.which(SERVERS[example], path="/usr/sbin:/usr/bin") is None:
        pytest.fail(f"{SERVERS[example]} is not installed (scripts/setup.sh installs it)")
    app = EXAMPLES[example]
    workdir = copy_example(example, tmp_path)
    run(["make", "SGX=1"], geode_env, cwd=workdir)

    manifest = workdir / f"{app}.manifest"
    manifest_sgx = workdir / f"{app}.manifest.sgx"
    sig = workdir / f"{app}.sig"
    for path in (manifest, manifest_sgx, sig):
        assert path.is_file(), path
    assert sig.stat().st_size == 1808

    run(["gramine-manifest-check", str(manifest)], geode_env)
    text = manifest_sgx.read_text()
    assert "sha256" in text and 'uri = "file:' in text

    view = json.loads(run(["gramine-sgx-sigstruct-view", "--output-format", "json", "-v",
                           str(sig)], geode_env).stdout)
    measured = run(["geode", "measure", str(manifest_sgx)], geode_env).stdout.strip()
    assert view["mr_enclave"] == measured
    # every example is a debug enclave except the default one, which attests
    assert view["debug_enclave"] is (example != "demo")

    verified = run(["geode", "sigstruct", "verify", str(sig), "--manifest", str(manifest_sgx),
                    "--json"], geode_env)
    assert json.loads(verified.stdout)["verified"] is True

    # `make check` runs gramine-direct, which picks up and verifies the signed manifest.
    checked = run(["make", "check"], geode_env, cwd=workdir)
    assert "[ Success ]" in checked.stdout


def test_tampered_or_unsigned_manifest_is_refused(
    tmp_path: Path, geode_env: dict[str, str]
) -> None:
    workdir = copy_example("helloworld", tmp_path)
    run(["make", "SGX=1"], geode_env, cwd=workdir)
    assert run(["gramine-direct", "helloworld"], geode_env, cwd=workdir).stdout == "Hello, world\n"

    signed = workdir / "helloworld.manifest.sgx"
    original = signed.read_bytes()
    signed.write_bytes(
        original.replace(b'entrypoint = "/helloworld"', b'entrypoint = "/helloworle"')
    )
    proc = run(["gramine-direct", "helloworld"], geode_env, cwd=workdir, check=False)
    assert proc.returncode != 0 and "Hello" not in proc.stdout
    assert "measurement mismatch" in proc.stderr and "Traceback" not in proc.stderr

    signed.write_bytes(original)
    (workdir / "helloworld.sig").unlink()
    proc = run(["gramine-direct", "helloworld"], geode_env, cwd=workdir, check=False)
    assert proc.returncode != 0 and "Hello" not in proc.stdout
    assert "helloworld.sig" in proc.stderr

    proc = run(["gramine-sgx", "helloworld"], geode_env, cwd=workdir, check=False)
    assert proc.returncode != 0 and "Hello" not in proc.stdout
    assert "SGX" in proc.stderr and "--tee" in proc.stderr


def test_log_file_and_exit_status_reach_the_host(tmp_path: Path,
                                                 geode_env: dict[str, str]) -> None:
    """``gramine-direct`` ends without Python's finalization (cli.common.exit_now): what the
    supervisor logged to ``loader.log_file`` is on disk and the program's status is the
    command's."""
    workdir = copy_example("bash", tmp_path)
    template = workdir / "bash.manifest.template"
    template.write_text(template.read_text() + 'loader.log_file = "geode.log"\n')
    run(["make", "SGX=1", "GRAMINE_LOG_LEVEL=warning"], geode_env, cwd=workdir)
    (workdir / "scripts" / "unlisted.sh").write_text("echo unlisted\n")  # after signing
    proc = run(["gramine-direct", "bash", "-c", "cat /scripts/unlisted.sh; echo done; exit 7"],
               geode_env, cwd=workdir, check=False)
    assert proc.returncode == 7, proc.stderr
    assert proc.stdout == "done\n"
    log = (workdir / "geode.log").read_text()
    assert "refusing to open /scripts/unlisted.sh" in log
    assert "refusing" not in proc.stderr  # the log went to the file only
