"""Tests for geode.manifest.banner: which settings are reported, and the banner's shape."""

from __future__ import annotations

import copy
import tomllib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geode.manifest.banner import banner_text, insecure_settings
from geode.manifest.schema import check

PRODUCTION = """
libos.entrypoint = "/usr/local/nginx/sbin/nginx"
loader.log_level = "error"
loader.env.LD_LIBRARY_PATH = "/lib"
loader.argv = ["nginx"]
fs.mounts = [
  { path = "/lib", uri = "file:/usr/lib/x86_64-linux-gnu/gramine/runtime/glibc" },
  { path = "/usr/local/nginx", uri = "file:install" },
]
sys.insecure__allow_eventfd = false
sgx.debug = false
sgx.insecure__rpc_thread_num = 8
sgx.file_check_policy = "strict"
sgx.allowed_files = []
sgx.remote_attestation = "dcap"
sgx.trusted_files = ["file:install/"]
fs.insecure__keys = {}
geode.tee = "tdx"
"""

# (dotted key, value that enables it) for every setting the banner reports
INSECURE: dict[str, Any] = {
    "sgx.debug": True,
    "loader.log_level": "debug",
    "loader.insecure__use_cmdline_argv": True,
    "loader.insecure__use_host_env": True,
    "loader.insecure__disable_aslr": True,
    "sys.insecure__allow_eventfd": True,
    "sys.experimental__enable_flock": True,
    "sgx.insecure__allow_memfaults_without_exinfo": True,
    "sgx.file_check_policy": "allow_all_but_log",
    "sgx.allowed_files": ["file:logs/"],
    "fs.insecure__keys": {"default": "00" * 16},
    "geode.tee": "sim",
}


def production() -> dict[str, Any]:
    manifest = tomllib.loads(PRODUCTION)
    check(manifest)
    return manifest


def put(manifest: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = manifest
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = copy.deepcopy(value)


def test_production_manifest_has_no_insecure_settings() -> None:
    assert insecure_settings(production()) == []
    assert banner_text([]) == ""


@pytest.mark.parametrize("key", sorted(INSECURE))
def test_each_insecure_setting_gives_one_line_naming_its_key(key: str) -> None:
    manifest = production()
    if key == "loader.insecure__use_cmdline_argv":
        del manifest["loader"]["argv"]  # keep the manifest valid
    put(manifest, key, INSECURE[key])
    check(manifest)
    lines = insecure_settings(manifest)
    assert len(lines) == 1, lines
    assert lines[0].startswith(key)


@pytest.mark.parametrize(("level", "reported"), [
    ("none", False), ("error", False), ("warning", True), ("debug", True), ("trace", True),
    ("all", True),
])
def test_log_levels_other_than_none_and_error_are_reported(level: str, reported: bool) -> None:
    manifest = production()
    manifest["loader"]["log_level"] = level
    lines = insecure_settings(manifest)
    assert lines == ([lines[0]] if reported else [])
    if reported:
        assert f'"{level}"' in lines[0]


def test_counts_are_reported() -> None:
    manifest = production()
    manifest["sgx"]["allowed_files"] = ["file:a", "file:b", "dev:tty"]
    manifest["fs"]["insecure__keys"] = {"k1": "0" * 32}
    lines = insecure_settings(manifest)
    assert any(line.startswith("sgx.allowed_files: 3 entries") for line in lines)
    assert any(line.startswith("fs.insecure__keys: 1 encryption key ") for line in lines)


@pytest.mark.parametrize(("key", "value"), [
    ("sgx.debug", "true"),
    ("sgx.debug", 1),
    ("loader.insecure__use_host_env", "yes"),
    ("sgx.allowed_files", "file:x"),
    ("fs.insecure__keys", "k"),
    ("loader.log_level", 5),
    ("sgx", 5),
    ("geode.tee", "tdx"),
    ("sgx.file_check_policy", "strict"),
])
def test_values_that_do_not_enable_a_setting_are_not_reported(key: str, value: Any) -> None:
    manifest = production()
    put(manifest, key, value)
    assert insecure_settings(manifest) == []


@given(st.sets(st.sampled_from(sorted(INSECURE))))
def test_one_line_per_enabled_setting(enabled: set[str]) -> None:
    manifest = production()
    for key in enabled:
        put(manifest, key, INSECURE[key])
    lines = insecure_settings(manifest)
    assert len(lines) == len(enabled)
    for key in enabled:
        assert sum(line.startswith(key) for line in lines) == 1, key
    text = banner_text(lines)
    if enabled:
        assert all(f"  * {line}\n" in text for line in lines)
        positions = [text.index(line) for line in lines]
        assert positions == sorted(positions)
    else:
        assert text == ""


def test_banner_shape() -> None:
    text = banner_text(["sgx.debug = true: debug", "geode.tee = \"sim\": simulated"])
    rows = text.splitlines()
    assert text.endswith("\n")
    assert rows[0] == rows[-1] and set(rows[0]) == {"="}
    assert "production" in text
    assert rows.count("  * sgx.debug = true: debug") == 1
    assert max(len(row) for row in rows) <= 100
