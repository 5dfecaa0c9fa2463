"""The examples render, check and sign with the gramine-* commands, driven by their Makefiles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import copy_example, run

EXAMPLES = {
    "helloworld": "helloworld",
    "python": "python",
    "bash": "bash",
    "redis": "redis-server",
    "nginx": "nginx",
}


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_example_renders_checks_and_signs(
    example: str, tmp_path: Path, geode_env: dict[str, str]
) -> None:
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
    assert view["debug_enclave"] is True

    verified = run(["geode", "sigstruct", "verify", str(sig), "--manifest", str(manifest_sgx),
                    "--json"], geode_env)
    assert json.loads(verified.stdout)["verified"] is True
