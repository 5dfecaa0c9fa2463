"""Tests for geode.manifest.schema: Gramine v1.9 manifests, errors naming keys, defaults."""

from __future__ import annotations

import copy
import json
import re
import tomllib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from geode.errors import ManifestError
from geode.manifest.schema import (
    KEYS,
    AbsPathType,
    AnyType,
    ArrayType,
    BoolType,
    EnumType,
    HexType,
    IntType,
    MaskType,
    OneOfType,
    SizeType,
    StrType,
    Support,
    TableType,
    TrueOnlyType,
    UriType,
    ValueType,
    apply_defaults,
    check,
    lookup,
    parse_size,
    schema_reference_markdown,
)

LIBOS_URI = "file:/opt/geode/lib/geode-runtime"
RUNTIME = "/usr/lib/x86_64-linux-gnu/gramine/runtime/glibc"
SHA_A = "a" * 64
SHA_B = "0123456789abcdef" * 4

# ------------------------------------------------------------------------------------------
# Realistic Gramine manifests (rendered from the CI-Examples' templates, before defaults)
# ------------------------------------------------------------------------------------------

HELLOWORLD = f"""
libos.entrypoint = "/helloworld"
loader.log_level = "error"
loader.env.LD_LIBRARY_PATH = "/lib"

fs.mounts = [
  {{ path = "/lib", uri = "file:{RUNTIME}" }},
  {{ path = "/helloworld", uri = "file:helloworld" }},
]

sgx.debug = true
sgx.edmm_enable = false
sgx.trusted_files = [
  "file:helloworld",
  "file:{RUNTIME}/",
]
"""

# what gramine-manifest writes for the above (defaults applied, trusted files hashed)
HELLOWORLD_RENDERED = f"""
[libos]
entrypoint = "/helloworld"

[loader]
log_level = "error"

[loader.entrypoint]
uri = "file:/usr/lib/x86_64-linux-gnu/gramine/libsysdb.so"
sha256 = "{SHA_B}"

[loader.env]
LD_LIBRARY_PATH = "/lib"

[[fs.mounts]]
path = "/lib"
uri = "file:{RUNTIME}"

[[fs.mounts]]
path = "/helloworld"
uri = "file:helloworld"

[sgx]
debug = true
edmm_enable = false
max_threads = 4
isvprodid = 0
isvsvn = 0
remote_attestation = "none"
enable_stats = false
enclave_size = "256M"
use_exinfo = false
trusted_files = [
  {{ uri = "file:helloworld", sha256 = "{SHA_A}" }},
  {{ uri = "file:{RUNTIME}/ld-linux-x86-64.so.2", sha256 = "{SHA_B}" }},
]

[sgx.cpu_features]
avx = "unspecified"
avx512 = "unspecified"
amx = "unspecified"
mpx = "disabled"
pkru = "disabled"
"""

PYTHON = f"""
libos.entrypoint = "/usr/bin/python3.12"
loader.log_level = "error"
loader.env.LD_LIBRARY_PATH = "/lib:/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu"
loader.env.OMP_NUM_THREADS = "4"
loader.insecure__use_cmdline_argv = true

sys.enable_sigterm_injection = true
sys.stack.size = "2M"
sys.enable_extra_runtime_domain_names_conf = true

fs.mounts = [
  {{ path = "/lib", uri = "file:{RUNTIME}" }},
  {{ path = "/lib/x86_64-linux-gnu", uri = "file:/lib/x86_64-linux-gnu" }},
  {{ path = "/usr/lib/x86_64-linux-gnu", uri = "file:/usr/lib/x86_64-linux-gnu" }},
  {{ path = "/usr/lib/python3.12", uri = "file:/usr/lib/python3.12" }},
  {{ path = "/usr/lib/python3/dist-packages", uri = "file:/usr/lib/python3/dist-packages" }},
  {{ path = "/usr/bin/python3.12", uri = "file:/usr/bin/python3.12" }},
  {{ path = "/etc/hosts", uri = "file:helper-files/hosts" }},
  {{ type = "tmpfs", path = "/tmp" }},
]

sgx.debug = false
sgx.edmm_enable = false
sgx.enclave_size = "1G"
sgx.max_threads = 32
sgx.remote_attestation = "dcap"
sgx.trusted_files = [
  "file:/usr/bin/python3.12",
  "file:{RUNTIME}/",
  "file:/lib/x86_64-linux-gnu/",
  "file:/usr/lib/x86_64-linux-gnu/",
  "file:/usr/lib/python3.12/",
  "file:/usr/lib/python3/dist-packages/",
  "file:helper-files/",
  "file:scripts/",
]
"""

REDIS = f"""
libos.entrypoint = "/redis-server"
loader.log_level = "error"
loader.env.LD_LIBRARY_PATH = "/lib:/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu"
loader.argv = ["redis-server", "--save", "", "--protected-mode", "no"]

fs.mounts = [
  {{ path = "/lib", uri = "file:{RUNTIME}" }},
  {{ path = "/lib/x86_64-linux-gnu", uri = "file:/lib/x86_64-linux-gnu" }},
  {{ path = "/usr/lib/x86_64-linux-gnu", uri = "file:/usr/lib/x86_64-linux-gnu" }},
  {{ path = "/redis-server", uri = "file:redis-server" }},
  {{ path = "/etc", uri = "file:/etc" }},
]

sys.enable_sigterm_injection = true

sgx.debug = false
sgx.edmm_enable = false
sgx.max_threads = 8
sgx.insecure__rpc_thread_num = 8
sgx.trusted_files = [
  "file:redis-server",
  "file:{RUNTIME}/",
  "file:/lib/x86_64-linux-gnu/",
  "file:/usr/lib/x86_64-linux-gnu/",
  "file:/etc/nsswitch.conf",
  "file:/etc/host.conf",
]
"""

NGINX = f"""
libos.entrypoint = "/usr/local/nginx/sbin/nginx"
loader.log_level = "error"
loader.env.LD_LIBRARY_PATH = "/lib:/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu"
loader.argv_src_file = "file:nginx_args"
loader.uid = 1000
loader.gid = 1000

fs.mounts = [
  {{ path = "/lib", uri = "file:{RUNTIME}" }},
  {{ path = "/lib/x86_64-linux-gnu", uri = "file:/lib/x86_64-linux-gnu" }},
  {{ path = "/usr/lib/x86_64-linux-gnu", uri = "file:/usr/lib/x86_64-linux-gnu" }},
  {{ path = "/etc", uri = "file:/etc" }},
  {{ path = "/usr/local/nginx", uri = "file:install" }},
  {{ type = "tmpfs", path = "/var/tmp", uri = "file:dummy-unused-by-tmpfs-uri" }},
]

sys.enable_sigterm_injection = true
sys.fds.limit = 4096

sgx.debug = false
sgx.max_threads = 16
sgx.isvprodid = 1
sgx.isvsvn = 3
sgx.remote_attestation = "dcap"
sgx.cpu_features.avx512 = "disabled"
sgx.seal_key.flags_mask = "0xffffffffffffffff"
sgx.seal_key.misc_mask = "0xffffffff"
sgx.file_check_policy = "strict"
sgx.trusted_files = [
  "file:install/sbin/nginx",
  "file:install/conf/",
  "file:install/html/",
  "file:nginx_args",
  "file:{RUNTIME}/",
  "file:/lib/x86_64-linux-gnu/",
  "file:/usr/lib/x86_64-linux-gnu/",
]
sgx.allowed_files = ["file:install/logs/"]
"""

ENCRYPTED_WITH_RECOVERY = (
    '{ type = "encrypted", path = "/data", uri = "file:data", key_name = "_sgx_mrenclave", '
    "enable_recovery = true }"
)

SECRET_PROV = f"""
libos.entrypoint = "/client"
loader.log_level = "error"
loader.env.LD_LIBRARY_PATH = "/lib:/lib/x86_64-linux-gnu"
loader.env.LD_PRELOAD = "libsecret_prov_attest.so"
loader.env.SECRET_PROVISION_CONSTRUCTOR = {{ value = "1" }}
loader.env.SECRET_PROVISION_SET_KEY = "default"
loader.env.SECRET_PROVISION_CA_CHAIN_PATH = "/ca.crt"
loader.env.SECRET_PROVISION_SERVERS = {{ passthrough = true }}

fs.root = {{ type = "chroot", uri = "file:/" }}
fs.start_dir = "/app"
fs.mounts = [
  {{ path = "/lib", uri = "file:{RUNTIME}" }},
  {{ path = "/client", uri = "file:client" }},
  {{ path = "/ca.crt", uri = "file:../ssl/ca.crt" }},
  {{ path = "/files/", uri = "file:enc_files/", type = "encrypted", key_name = "default" }},
  {ENCRYPTED_WITH_RECOVERY},
  {{ type = "untrusted_shm", path = "/dev/shm", uri = "dev:/dev/shm" }},
]
fs.insecure__keys.debug_key = "00112233445566778899aabbccddeeff"

sys.allowed_ioctls = [{{ request_code = 0x8912, struct = "ifconf" }}]
sys.ioctl_structs.ifconf = [
  {{ size = 4, direction = "out", name = "ifc_len" }},
  {{ size = 4, direction = "none" }},
  {{ ptr = [ {{ size = "ifc_len", direction = "in" }} ] }},
]
sys.debug__mock_syscalls = [
  {{ name = "sched_yield", return = 0 }},
  {{ name = "shmget", return = -38 }},
  {{ name = "sched_setaffinity" }},
]

sgx.enclave_size = "512M"
sgx.edmm_enable = false
sgx.remote_attestation = "dcap"
sgx.trusted_files = [
  "file:client",
  "file:{RUNTIME}/",
  {{ uri = "file:../ssl/ca.crt", sha256 = "{SHA_A}" }},
]

geode.tee = "sim"
"""

REALISTIC = {
    "helloworld": HELLOWORLD,
    "helloworld-rendered": HELLOWORLD_RENDERED,
    "python": PYTHON,
    "redis": REDIS,
    "nginx": NGINX,
    "secret-prov": SECRET_PROV,
}


def parse(text: str) -> dict[str, Any]:
    return tomllib.loads(text)


def errors_at(manifest: dict[str, Any], key: str, *, source: str | None = None) -> str:
    """Run check, require a ManifestError that names ``key`` first, return its text."""
    with pytest.raises(ManifestError) as info:
        check(manifest, source=source)
    text = str(info.value)
    prefix = f"{source}: {key}:" if source else f"{key}:"
    assert text.startswith(prefix), f"expected error at {key!r}, got: {text}"
    assert "\n" not in text
    return text


@pytest.mark.parametrize("name", sorted(REALISTIC))
def test_realistic_manifests_pass(name: str) -> None:
    manifest = parse(REALISTIC[name])
    check(manifest)
    check(manifest, source=f"{name}.manifest")
    check(apply_defaults(manifest, libos_uri=LIBOS_URI))


# ------------------------------------------------------------------------------------------
# Every error class names the offending key
# ------------------------------------------------------------------------------------------


def edit(text: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    manifest = parse(text)
    change(manifest)
    return manifest


def test_unknown_keys_are_errors() -> None:
    m = edit(HELLOWORLD, lambda m: m.update(extra={"x": 1}))
    assert "unknown key" in errors_at(m, "extra")

    m = edit(HELLOWORLD, lambda m: m["fs"]["mounts"][1].update(pth="/x"))
    assert "did you mean 'path'" in errors_at(m, "fs.mounts[1].pth")

    m = edit(HELLOWORLD, lambda m: m["sgx"].update(thread_num=8))
    assert "sgx.max_threads" in errors_at(m, "sgx.thread_num")

    m = edit(HELLOWORLD, lambda m: m["sgx"].update(require_avx=True))
    assert "cpu_features" in errors_at(m, "sgx.require_avx")

    m = edit(HELLOWORLD, lambda m: m["sgx"].update(protected_files=["file:x"]))
    assert "encrypted" in errors_at(m, "sgx.protected_files")

    m = edit(HELLOWORLD, lambda m: m["sgx"].update(trusted_files_cache_size="10M"))
    errors_at(m, "sgx.trusted_files_cache_size")

    m = edit(HELLOWORLD, lambda m: m["fs"].update(root={"uri": "file:.", "path": "/"}))
    errors_at(m, "fs.root.path")


def test_unknown_geode_keys_are_errors() -> None:
    m = edit(HELLOWORLD, lambda m: m.update(geode={"tee": "sim", "te": "none"}))
    assert "geode.tee" in errors_at(m, "geode.te")
    m = edit(HELLOWORLD, lambda m: m.update(geode={"tee": "sgx"}))
    assert '"snp"' in errors_at(m, "geode.tee")
    for tee in ("none", "sim", "tdx", "snp"):
        m = parse(HELLOWORLD)
        m["geode"] = {"tee": tee}
        check(m)


@pytest.mark.parametrize(
    ("change", "key", "phrase"),
    [
        (lambda m: m["sgx"].update(debug="true"), "sgx.debug", "expected a boolean"),
        (lambda m: m["sgx"].update(max_threads="4"), "sgx.max_threads", "expected an integer"),
        (lambda m: m["sgx"].update(max_threads=0), "sgx.max_threads", ">= 1"),
        (lambda m: m["sgx"].update(max_threads=4.0), "sgx.max_threads", "got float"),
        (lambda m: m["sgx"].update(isvprodid=70000), "sgx.isvprodid", "0..65535"),
        (lambda m: m["sgx"].update(debug=1), "sgx.debug", "got integer 1"),
        (lambda m: m["loader"].update(uid=-1), "loader.uid", "0..4294967295"),
        (lambda m: m["loader"].update(argv="redis-server"), "loader.argv", "expected an array"),
        (lambda m: m["loader"].update(argv=["a", 3]), "loader.argv[1]", "expected a string"),
        (lambda m: m["fs"].update(mounts={"path": "/x"}), "fs.mounts", "expected an array"),
        (lambda m: m["fs"]["mounts"].__setitem__(0, "file:/x"), "fs.mounts[0]", "table"),
        (lambda m: m.update(sgx=[]), "sgx", "expected a table"),
        (lambda m: m["libos"].update(entrypoint=""), "libos.entrypoint", "non-empty"),
        (lambda m: m["sgx"].update(trusted_files={"a": "file:a"}), "sgx.trusted_files",
         "array of"),
        (lambda m: m["sgx"]["trusted_files"].append(5), "sgx.trusted_files[2]", "or table"),
        (lambda m: m["sgx"].update(allowed_files=["/tmp/x"]), "sgx.allowed_files[0]", "dev:"),
        (lambda m: m["sys"].update(fds={"limit": "900"}) if "sys" in m else
         m.update(sys={"fds": {"limit": "900"}}), "sys.fds.limit", "integer"),
    ],
)
def test_wrong_types_name_the_key(
    change: Callable[[dict[str, Any]], None], key: str, phrase: str
) -> None:
    assert phrase in errors_at(edit(HELLOWORLD, change), key)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda m: m["loader"].update(log_level="verbose"), "loader.log_level"),
        (lambda m: m["fs"]["mounts"][1].update(type="bind"), "fs.mounts[1].type"),
        (lambda m: m["sgx"].update(cpu_features={"mpx": "unspecified"}), "sgx.cpu_features.mpx"),
        (lambda m: m["sgx"].update(cpu_features={"avx": "on"}), "sgx.cpu_features.avx"),
        (lambda m: m["sgx"].update(file_check_policy="allow_all"), "sgx.file_check_policy"),
        (lambda m: m["sgx"].update(profile={"mode": "ocall"}), "sgx.profile.mode"),
    ],
)
def test_bad_enum_values_name_the_key(change: Callable[[dict[str, Any]], None], key: str) -> None:
    assert "expected one of" in errors_at(edit(HELLOWORLD, change), key)


def test_remote_attestation_values() -> None:
    for value in ("none", "dcap"):
        m = parse(HELLOWORLD)
        m["sgx"]["remote_attestation"] = value
        check(m)
    text = errors_at(
        edit(HELLOWORLD, lambda m: m["sgx"].update(remote_attestation="epid")),
        "sgx.remote_attestation",
    )
    assert "epid" in text and "dcap" in text and "no longer supported" in text
    assert "boolean" not in text
    text = errors_at(
        edit(HELLOWORLD, lambda m: m["sgx"].update(remote_attestation=True)),
        "sgx.remote_attestation",
    )
    assert "boolean form" in text
    text = errors_at(
        edit(HELLOWORLD, lambda m: m["sgx"].update(remote_attestation="ecdsa")),
        "sgx.remote_attestation",
    )
    assert "expected one of" in text and "boolean" not in text


@pytest.mark.parametrize("bad", ["2MB", "-1M", "1T", "", " 2M", "2 M", "0x10", "1.5G", "M",
                                 "18446744073709551616", "17179869184G"])
def test_bad_size_strings_name_the_key(bad: str) -> None:
    m = edit(HELLOWORLD, lambda m: m.update(sys={"stack": {"size": bad}}))
    errors_at(m, "sys.stack.size")


def test_size_must_be_a_string_in_manifests() -> None:
    m = edit(HELLOWORLD, lambda m: m.update(sys={"brk": {"max_size": 262144}}))
    assert "got integer 262144" in errors_at(m, "sys.brk.max_size")


@pytest.mark.parametrize("size", ["300M", "0", "3G", "1000K"])
def test_enclave_size_must_be_power_of_two(size: str) -> None:
    m = edit(HELLOWORLD, lambda m: m["sgx"].update(enclave_size=size))
    assert "power of two" in errors_at(m, "sgx.enclave_size")


@pytest.mark.parametrize("size", ["256M", "1G", "1024G", "64m", "4096k", "1"])
def test_enclave_size_powers_of_two_pass(size: str) -> None:
    check(edit(HELLOWORLD, lambda m: m["sgx"].update(enclave_size=size)))


@pytest.mark.parametrize(
    ("loader", "second"),
    [
        ({"argv": ["a"], "argv_src_file": "file:args"}, "loader.argv_src_file"),
        ({"argv": ["a"], "insecure__use_cmdline_argv": True}, "loader.insecure__use_cmdline_argv"),
        ({"argv_src_file": "file:a", "insecure__use_cmdline_argv": True},
         "loader.insecure__use_cmdline_argv"),
    ],
)
def test_argv_sources_are_mutually_exclusive(loader: dict[str, Any], second: str) -> None:
    m = edit(HELLOWORLD, lambda m: m["loader"].update(loader))
    assert "mutually exclusive" in errors_at(m, second)


def test_argv_with_cmdline_argv_false_is_fine() -> None:
    check(edit(HELLOWORLD, lambda m: m["loader"].update(
        argv=["hello"], insecure__use_cmdline_argv=False)))


def mount_at(index: int, mount: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    return lambda m: m["fs"]["mounts"].insert(index, mount)


@pytest.mark.parametrize(
    ("mount", "key", "phrase"),
    [
        ({"path": "/x", "uri": "file:x", "key_name": "k"}, "fs.mounts[0].key_name", "'encrypted'"),
        ({"type": "tmpfs", "path": "/t", "enable_recovery": True},
         "fs.mounts[0].enable_recovery", "'tmpfs'"),
        ({"type": "encrypted", "path": "/e", "uri": "dev:/dev/x"}, "fs.mounts[0].uri", "file:"),
        ({"path": "/x"}, "fs.mounts[0].uri", "required key missing"),
        ({"type": "untrusted_shm", "path": "/dev/shm"}, "fs.mounts[0].uri", "required"),
        ({"path": "/x", "uri": "x"}, "fs.mounts[0].uri", "file:"),
        ({"uri": "file:x"}, "fs.mounts[0].path", "required key missing"),
        ({"path": "lib", "uri": "file:lib"}, "fs.mounts[0].path", "absolute"),
        ({"path": "/x", "uri": "file:x", "type": 1}, "fs.mounts[0].type", "expected one of"),
    ],
)
def test_mount_errors_name_the_key(mount: dict[str, Any], key: str, phrase: str) -> None:
    assert phrase in errors_at(edit(HELLOWORLD, mount_at(0, mount)), key)


def test_mount_types_accept_their_own_keys() -> None:
    for mount in (
        {"type": "tmpfs", "path": "/tmp"},
        {"type": "tmpfs", "path": "/tmp", "uri": "anything"},
        {"type": "encrypted", "path": "/e", "uri": "file:e"},
        {"type": "encrypted", "path": "/e", "uri": "file:e", "key_name": "_sgx_mrsigner",
         "enable_recovery": False},
        {"type": "untrusted_shm", "path": "/dev/shm", "uri": "dev:/dev/shm"},
        {"type": "chroot", "path": "/c", "uri": "file:c"},
    ):
        check(edit(HELLOWORLD, mount_at(1, mount)))


def test_fs_root_follows_mount_rules() -> None:
    check(edit(HELLOWORLD, lambda m: m["fs"].update(root={"uri": "file:."})))
    check(edit(HELLOWORLD, lambda m: m["fs"].update(root={"type": "tmpfs"})))
    errors_at(edit(HELLOWORLD, lambda m: m["fs"].update(root={"type": "chroot"})), "fs.root.uri")
    errors_at(edit(HELLOWORLD, lambda m: m["fs"].update(root={"uri": "file:.", "key_name": "k"})),
              "fs.root.key_name")


@pytest.mark.parametrize(
    ("remove", "key"),
    [
        (lambda m: m["libos"].pop("entrypoint"), "libos.entrypoint"),
        (lambda m: m.pop("libos"), "libos.entrypoint"),
        (lambda m: m["fs"].pop("mounts"), "fs.mounts"),
        (lambda m: m.pop("fs"), "fs.mounts"),
        (lambda m: m["sgx"]["trusted_files"].append({"sha256": SHA_A}), "sgx.trusted_files[2].uri"),
        (lambda m: m.update(sys={"allowed_ioctls": [{"struct": "s"}]}),
         "sys.allowed_ioctls[0].request_code"),
        (lambda m: m.update(sys={"debug__mock_syscalls": [{"return": 0}]}),
         "sys.debug__mock_syscalls[0].name"),
    ],
)
def test_required_keys(remove: Callable[[dict[str, Any]], Any], key: str) -> None:
    assert "required key missing" in errors_at(edit(HELLOWORLD, remove), key)


def test_loader_entrypoint_is_optional_and_must_be_a_table() -> None:
    check(parse(HELLOWORLD))  # no loader.entrypoint: apply_defaults fills it in
    m = edit(HELLOWORLD, lambda m: m["loader"].update(entrypoint="file:/x/libsysdb.so"))
    assert "string form was removed" in errors_at(m, "loader.entrypoint")
    m = edit(HELLOWORLD, lambda m: m["loader"].update(entrypoint={"uri": "/x"}))
    errors_at(m, "loader.entrypoint.uri")
    m = edit(HELLOWORLD, lambda m: m["loader"].update(entrypoint=["file:/x"]))
    assert "string form" not in errors_at(m, "loader.entrypoint")
    m = edit(HELLOWORLD, lambda m: m["sgx"].update(trusted_files={"a": "file:a"}))
    assert "table form" in errors_at(m, "sgx.trusted_files")
    m = edit(HELLOWORLD, lambda m: m["loader"].update(entrypoint={"uri": "file:/x",
                                                                  "sha256": "ab"}))
    assert "64 hex digits" in errors_at(m, "loader.entrypoint.sha256")


@pytest.mark.parametrize(
    "value", ["v", "", {"value": "v"}, {"value": ""}, {"passthrough": True}]
)
def test_env_forms_accepted(value: Any) -> None:
    check(edit(HELLOWORLD, lambda m: m["loader"]["env"].update(FOO=value)))


@pytest.mark.parametrize(
    ("value", "key", "phrase"),
    [
        ({"passthrough": False}, "loader.env.FOO.passthrough", "deny-list"),
        ({"value": "v", "passthrough": True}, "loader.env.FOO", "mutually exclusive"),
        ({}, "loader.env.FOO", "empty table"),
        ({"value": 1}, "loader.env.FOO.value", "expected a string"),
        ({"passthrough": "true"}, "loader.env.FOO.passthrough", "expected true"),
        ({"value": "v", "default": "w"}, "loader.env.FOO.default", "unknown key"),
        (5, "loader.env.FOO", "string or table"),
    ],
)
def test_env_errors_name_the_variable(value: Any, key: str, phrase: str) -> None:
    assert phrase in errors_at(edit(HELLOWORLD, lambda m: m["loader"]["env"].update(FOO=value)),
                               key)


def test_env_names_with_odd_characters_are_quoted_in_paths() -> None:
    m = edit(HELLOWORLD, lambda m: m["loader"]["env"].update({"A.B": {"passthrough": False}}))
    errors_at(m, 'loader.env."A.B".passthrough')
    m = edit(HELLOWORLD, lambda m: m["loader"]["env"].update({"A=B": "x"}))
    assert "'='" in errors_at(m, 'loader.env."A=B"')


@pytest.mark.parametrize("key", ["0" * 31, "0" * 33, "g" * 32, "", 5])
def test_insecure_keys_must_be_32_hex_digits(key: Any) -> None:
    m = edit(HELLOWORLD, lambda m: m["fs"].update(insecure__keys={"default": key}))
    errors_at(m, "fs.insecure__keys.default")


def test_insecure_keys_accept_any_case_hex() -> None:
    check(edit(HELLOWORLD, lambda m: m["fs"].update(
        insecure__keys={"default": "00112233445566778899AABBCCDDEEFF", "k2": "f" * 32})))


@pytest.mark.parametrize(
    ("entry", "key", "phrase"),
    [
        ({"uri": "file:a", "sha256": "a" * 63}, "sgx.trusted_files[2].sha256", "64 hex"),
        ({"uri": "file:a", "sha256": "g" * 64}, "sgx.trusted_files[2].sha256", "64 hex"),
        ({"uri": "file:dir/", "sha256": SHA_A}, "sgx.trusted_files[2].sha256", "directory"),
        ({"uri": "dev:tty"}, "sgx.trusted_files[2].uri", "file:"),
        ("dev:tty", "sgx.trusted_files[2]", "file:"),
        ({"uri": "file:a", "hash": SHA_A}, "sgx.trusted_files[2].hash", "unknown key"),
    ],
)
def test_trusted_file_errors(entry: Any, key: str, phrase: str) -> None:
    m = edit(HELLOWORLD, lambda m: m["sgx"]["trusted_files"].append(entry))
    assert phrase in errors_at(m, key)


@pytest.mark.parametrize(
    ("key", "value"),
    [("flags_mask", "0x1ffffffffffffffff"), ("misc_mask", "0x1ffffffff"), ("xfrm_mask", "zz"),
     ("xfrm_mask", "0x"), ("flags_mask", 255)],
)
def test_seal_key_masks(key: str, value: Any) -> None:
    errors_at(edit(HELLOWORLD, lambda m: m["sgx"].update(seal_key={key: value})),
              f"sgx.seal_key.{key}")


def test_errors_name_the_source_file() -> None:
    m = edit(HELLOWORLD, lambda m: m["fs"]["mounts"][1].update(type="bind"))
    text = errors_at(m, "fs.mounts[1].type", source="helloworld.manifest")
    assert "'bind'" in text or '"bind"' in text


def test_top_level_must_be_a_table() -> None:
    with pytest.raises(ManifestError, match="top level"):
        check([1, 2])  # type: ignore[arg-type,unused-ignore]


# ------------------------------------------------------------------------------------------
# apply_defaults
# ------------------------------------------------------------------------------------------

GRAMINE_WRITTEN_DEFAULTS = {
    "loader.entrypoint.uri": LIBOS_URI,
    "sgx.trusted_files": [],
    "sgx.max_threads": 4,
    "sgx.isvprodid": 0,
    "sgx.isvsvn": 0,
    "sgx.remote_attestation": "none",
    "sgx.debug": False,
    "sgx.enable_stats": False,
    "sgx.edmm_enable": False,
    "sgx.enclave_size": "256M",
    "sgx.use_exinfo": False,
    "sgx.cpu_features.avx": "unspecified",
    "sgx.cpu_features.avx512": "unspecified",
    "sgx.cpu_features.amx": "unspecified",
    "sgx.cpu_features.mpx": "disabled",
    "sgx.cpu_features.pkru": "disabled",
}


def get(manifest: dict[str, Any], dotted: str) -> Any:
    node: Any = manifest
    for part in dotted.split("."):
        node = node[part]
    return node


def leaves(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict) and node:
        for name, value in node.items():
            yield from leaves(value, f"{prefix}.{name}" if prefix else name)
    else:
        yield prefix


def test_apply_defaults_writes_exactly_gramines_defaults() -> None:
    minimal = {"libos": {"entrypoint": "/app"}, "fs": {"mounts": []}}
    result = apply_defaults(minimal, libos_uri=LIBOS_URI)
    for dotted, value in GRAMINE_WRITTEN_DEFAULTS.items():
        assert get(result, dotted) == value, dotted
    added = set(leaves(result)) - set(leaves(minimal))
    assert added == set(GRAMINE_WRITTEN_DEFAULTS)
    assert {k.path for k in KEYS if k.written} == set(GRAMINE_WRITTEN_DEFAULTS)
    check(result)


def test_apply_defaults_enclave_size_follows_edmm() -> None:
    m = {"libos": {"entrypoint": "/a"}, "fs": {"mounts": []}, "sgx": {"edmm_enable": True}}
    assert apply_defaults(m, libos_uri=LIBOS_URI)["sgx"]["enclave_size"] == "1024G"


def test_apply_defaults_keeps_existing_values_and_input() -> None:
    m = parse(NGINX)
    m["loader"]["entrypoint"] = {"uri": "file:/custom/runtime"}
    before = copy.deepcopy(m)
    result = apply_defaults(m, libos_uri=LIBOS_URI)
    assert m == before
    assert result["loader"]["entrypoint"] == {"uri": "file:/custom/runtime"}
    assert result["sgx"]["max_threads"] == 16
    assert result["sgx"]["cpu_features"]["avx512"] == "disabled"
    assert result["sgx"]["cpu_features"]["avx"] == "unspecified"
    assert result["sgx"]["trusted_files"] == m["sgx"]["trusted_files"]
    assert result["sgx"]["trusted_files"] is not m["sgx"]["trusted_files"]
    result["loader"]["env"]["NEW"] = "x"
    assert "NEW" not in m["loader"]["env"]


@pytest.mark.parametrize(
    ("manifest", "key"),
    [
        ({"loader": {"entrypoint": "file:/lib/libsysdb.so"}}, "loader.entrypoint"),
        ({"sgx": 5}, "sgx"),
        ({"sgx": {"cpu_features": "avx"}}, "sgx.cpu_features"),
    ],
)
def test_apply_defaults_rejects_non_tables(manifest: dict[str, Any], key: str) -> None:
    with pytest.raises(ManifestError) as info:
        apply_defaults(manifest, libos_uri=LIBOS_URI)
    assert str(info.value).startswith(f"{key}:")


# ------------------------------------------------------------------------------------------
# The key table itself
# ------------------------------------------------------------------------------------------


def test_key_table_is_consistent() -> None:
    paths = [k.path for k in KEYS]
    assert len(paths) == len(set(paths))
    for key in KEYS:
        assert key.doc and key.doc.endswith((".", ")")), key.path
        assert lookup(key.path) is key
        scalar = not isinstance(key.type, TableType | ArrayType | OneOfType)
        if scalar and key.default_doc is None and key.required is False:
            from geode.manifest.schema import NO_DEFAULT

            if key.default is not NO_DEFAULT:
                assert key.type.problem(key.default) is None, key.path
    assert all(k.path.startswith("geode.") or not k.path.startswith("geode") for k in KEYS)
    ignored = {k.path for k in KEYS if k.support is Support.IGNORED}
    assert {"sgx.preheat_enclave", "sgx.profile.enable", "sgx.profile.frequency"} <= ignored


def test_reference_markdown_lists_every_key_once() -> None:
    text = schema_reference_markdown()
    for key in KEYS:
        assert text.count(f"| `{key.path}` |") == 1, key.path
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) == len(KEYS)
    assert all(row.count(" | ") == 4 for row in rows)  # no stray unescaped pipes
    assert "| `sgx.enclave_size` | size" in text and '"1024G"' in text


# ------------------------------------------------------------------------------------------
# Property tests: manifests generated from the key table
# ------------------------------------------------------------------------------------------

TEXT = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"), max_size=12
)
NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)
ARGV_GROUP = {"loader.argv", "loader.argv_src_file", "loader.insecure__use_cmdline_argv"}


def size_strings(power_of_two: bool) -> st.SearchStrategy[str]:
    def render(n: int, unit: str) -> str:
        return f"{n}{unit}"

    if power_of_two:
        numbers = st.integers(0, 33).map(lambda e: 2**e)
        return st.builds(render, numbers, st.sampled_from(["", "K", "M", "G", "k", "g"]))
    return st.builds(render, st.integers(0, 10**9), st.sampled_from(["", "K", "M", "G", "m"]))


def scalar_values(vtype: ValueType) -> st.SearchStrategy[Any]:
    if isinstance(vtype, BoolType):
        return st.booleans()
    if isinstance(vtype, TrueOnlyType):
        return st.just(True)
    if isinstance(vtype, IntType):
        lo = -(2**63) if vtype.min_value is None else vtype.min_value
        hi = 2**63 - 1 if vtype.max_value is None else min(vtype.max_value, 2**63 - 1)
        return st.integers(lo, hi)
    if isinstance(vtype, UriType):
        return st.builds(lambda s, p: f"{s}:{p}", st.sampled_from(vtype.schemes),
                         TEXT.filter(bool))
    if isinstance(vtype, AbsPathType):
        return TEXT.map(lambda p: "/" + p)
    if isinstance(vtype, HexType):
        return st.text("0123456789abcdefABCDEF", min_size=vtype.digits, max_size=vtype.digits)
    if isinstance(vtype, MaskType):
        return st.integers(0, 2**vtype.bits - 1).map(hex)
    if isinstance(vtype, SizeType):
        return size_strings(vtype.power_of_two)
    if isinstance(vtype, EnumType):
        return st.sampled_from(vtype.values)
    if isinstance(vtype, StrType):
        return TEXT.filter(bool) if vtype.nonempty else TEXT
    if isinstance(vtype, AnyType):
        return st.just([{"size": 8, "direction": "out"}])
    raise AssertionError(f"no strategy for {vtype}")


SCALARS = (BoolType, TrueOnlyType, IntType, UriType, AbsPathType, HexType, MaskType, SizeType,
           EnumType, StrType)
GENERIC = [
    k for k in KEYS
    if "[]" not in k.path and "<" not in k.path and isinstance(k.type, SCALARS)
    and k.path not in ARGV_GROUP and not k.path.startswith("fs.root.")
]
# every other key is produced by a dedicated strategy below
COMPOSITE = {
    "loader.entrypoint", "fs.root", "fs.mounts", "sgx.trusted_files", "sgx.allowed_files",
    "sys.allowed_ioctls", "sys.debug__mock_syscalls", "libos.entrypoint",
} | ARGV_GROUP


def test_generators_cover_the_whole_key_table() -> None:
    covered = {k.path for k in GENERIC} | COMPOSITE
    uncovered = {
        k.path for k in KEYS
        if k.path not in covered and "[]" not in k.path and "<" not in k.path
        and not k.path.startswith("fs.root.")
    }
    assert uncovered == set(), "add a strategy for these keys"
    # fs.mounts[] / fs.root / env / trusted file / ioctl / mock keys are all used by the
    # strategies below; this list must match the table
    sub_keys = {k.path for k in KEYS if "[]" in k.path or "<" in k.path or
                k.path.startswith("fs.root.")}
    assert sub_keys == {
        "fs.root.type", "fs.root.uri", "fs.root.key_name", "fs.root.enable_recovery",
        "fs.mounts[].type", "fs.mounts[].path", "fs.mounts[].uri", "fs.mounts[].key_name",
        "fs.mounts[].enable_recovery", "loader.env.<NAME>", "loader.env.<NAME>.value",
        "loader.env.<NAME>.passthrough", "fs.insecure__keys.<NAME>", "sys.ioctl_structs.<ID>",
        "sys.allowed_ioctls[].request_code", "sys.allowed_ioctls[].struct",
        "sys.debug__mock_syscalls[].name", "sys.debug__mock_syscalls[].return",
        "sgx.trusted_files[].uri", "sgx.trusted_files[].sha256",
    }


@st.composite
def mounts(draw: st.DrawFn, *, with_path: bool) -> dict[str, Any]:
    type_key = lookup("fs.mounts[].type").type
    assert isinstance(type_key, EnumType)
    mtype = draw(st.sampled_from([None, *type_key.values]))
    effective = mtype or "chroot"
    mount: dict[str, Any] = {}
    if mtype is not None:
        mount["type"] = mtype
    if with_path:
        mount["path"] = draw(scalar_values(AbsPathType()))
    if effective == "encrypted":
        mount["uri"] = draw(scalar_values(UriType(("file",))))
        if draw(st.booleans()):
            mount["key_name"] = draw(TEXT.filter(bool))
        if draw(st.booleans()):
            mount["enable_recovery"] = draw(st.booleans())
    elif effective == "tmpfs":
        if draw(st.booleans()):
            mount["uri"] = draw(TEXT)
    else:
        mount["uri"] = draw(scalar_values(UriType(("file", "dev"))))
    return mount


def put(manifest: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = manifest
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


@st.composite
def trusted_entries(draw: st.DrawFn) -> Any:
    uri = "file:" + draw(TEXT.filter(bool))
    form = draw(st.sampled_from(["str", "uri", "hashed"]))
    if form == "str":
        return uri
    if form == "uri":
        return {"uri": uri}
    return {"uri": uri.rstrip("/") + "f", "sha256": draw(scalar_values(HexType(64)))}


@st.composite
def valid_manifests(draw: st.DrawFn) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "libos": {"entrypoint": draw(TEXT.filter(bool))},
        "fs": {"mounts": draw(st.lists(mounts(with_path=True), max_size=4))},
    }
    for key in draw(st.lists(st.sampled_from(GENERIC), unique_by=lambda k: k.path, max_size=25)):
        put(manifest, key.path, draw(scalar_values(key.type)))
    argv = draw(st.sampled_from(["none", "argv", "src", "cmdline", "cmdline-off"]))
    if argv == "argv":
        put(manifest, "loader.argv", draw(st.lists(TEXT, max_size=4)))
    elif argv == "src":
        put(manifest, "loader.argv_src_file", draw(scalar_values(UriType(("file",)))))
    elif argv.startswith("cmdline"):
        put(manifest, "loader.insecure__use_cmdline_argv", argv == "cmdline")
        if argv == "cmdline-off":
            put(manifest, "loader.argv", ["x"])
    env_value = st.one_of(TEXT, st.builds(lambda v: {"value": v}, TEXT),
                          st.just({"passthrough": True}))
    if draw(st.booleans()):
        put(manifest, "loader.env", draw(st.dictionaries(NAMES, env_value, max_size=4)))
    if draw(st.booleans()):
        put(manifest, "fs.root", draw(mounts(with_path=False)))
    if draw(st.booleans()):
        put(manifest, "fs.insecure__keys",
            draw(st.dictionaries(NAMES, scalar_values(HexType(32)), max_size=3)))
    if draw(st.booleans()):
        put(manifest, "sgx.trusted_files", draw(st.lists(trusted_entries(), max_size=4)))
    allowed = lookup("sgx.allowed_files").type
    assert isinstance(allowed, ArrayType)
    if draw(st.booleans()):
        put(manifest, "sgx.allowed_files", draw(st.lists(scalar_values(allowed.item), max_size=3)))
    if draw(st.booleans()):
        ioctl = st.fixed_dictionaries({"request_code": st.integers(0, 2**32)},
                                      optional={"struct": NAMES})
        put(manifest, "sys.allowed_ioctls", draw(st.lists(ioctl, max_size=3)))
        put(manifest, "sys.ioctl_structs",
            draw(st.dictionaries(NAMES, scalar_values(AnyType()), max_size=2)))
    if draw(st.booleans()):
        mock = st.fixed_dictionaries({"name": NAMES},
                                     optional={"return": st.integers(-4095, 2**31)})
        put(manifest, "sys.debug__mock_syscalls", draw(st.lists(mock, max_size=3)))
    return manifest




def nodes(value: Any, path: str = "") -> Iterator[tuple[str, Any, Any, Any]]:
    """(path, container, key, value) for every node below ``value``, not inside AnyType values."""
    if isinstance(value, dict):
        for name, item in value.items():
            child = f"{path}.{name}" if path else name
            if path == "sys.ioctl_structs":
                continue  # AnyType: anything goes
            yield child, value, name, item
            yield from nodes(item, child)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            child = f"{path}[{index}]"
            yield child, value, index, item
            yield from nodes(item, child)


WILDCARD_TABLES = {"loader.env", "fs.insecure__keys", "sys.ioctl_structs"}


def wrong_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "yes"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return 7
    if isinstance(value, list):
        return "not an array"
    return 7


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(valid_manifests())
def test_generated_manifests_pass(manifest: dict[str, Any]) -> None:
    check(manifest)
    defaulted = apply_defaults(manifest, libos_uri=LIBOS_URI)
    check(defaulted)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(valid_manifests(), st.data())
def test_wrong_type_anywhere_names_that_key(manifest: dict[str, Any], data: st.DataObject) -> None:
    manifest = json.loads(json.dumps(manifest))  # no shared sub-objects (see below)
    candidates = list(nodes(manifest))
    path, container, slot, value = data.draw(st.sampled_from(candidates))
    container[slot] = wrong_value(value)
    with pytest.raises(ManifestError) as info:
        check(manifest, source="gen.manifest")
    assert str(info.value).startswith(f"gen.manifest: {path}:"), (path, str(info.value))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(valid_manifests(), st.data())
def test_unknown_key_anywhere_names_that_key(manifest: dict[str, Any],
                                             data: st.DataObject) -> None:
    # The strategy may reuse one object at two places; a manifest parsed from TOML never does.
    manifest = json.loads(json.dumps(manifest))
    tables = [("", manifest)] + [
        (path, value) for path, _, _, value in nodes(manifest)
        if isinstance(value, dict) and path not in WILDCARD_TABLES
    ]
    path, table = data.draw(st.sampled_from(tables))
    name = data.draw(st.sampled_from(["zz_unknown", "Path", "debugg", "tee2"]))
    assume(name not in table)
    table[name] = data.draw(st.sampled_from([True, 1, "x", [], {}]))
    with pytest.raises(ManifestError) as info:
        check(manifest)
    full = f"{path}.{name}" if path else name
    assert str(info.value).startswith(f"{full}:"), (full, str(info.value))
    assert "unknown" in str(info.value)


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(valid_manifests())
def test_apply_defaults_is_idempotent_and_pure(manifest: dict[str, Any]) -> None:
    before = copy.deepcopy(manifest)
    once = apply_defaults(manifest, libos_uri=LIBOS_URI)
    assert manifest == before
    twice = apply_defaults(once, libos_uri="file:/other")
    assert twice == once
    # nothing the user wrote is changed
    for path, _, _, value in nodes(manifest):
        if not isinstance(value, dict | list):
            assert path_get(once, path) == value


def path_get(manifest: dict[str, Any], path: str) -> Any:
    node: Any = manifest
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        node = node[int(part[1:-1])] if part.startswith("[") else node[part]
    return node


# ------------------------------------------------------------------------------------------
# parse_size
# ------------------------------------------------------------------------------------------

UNITS = {"": 0, "K": 1, "M": 2, "G": 3}


@given(st.integers(0, 2**40), st.sampled_from(["", "K", "M", "G", "k", "m", "g"]),
       st.integers(0, 3))
def test_parse_size_roundtrip(n: int, unit: str, zeros: int) -> None:
    expected = n * 1024 ** UNITS[unit.upper()]
    assume(expected <= 2**64 - 1)
    assert parse_size("0" * zeros + f"{n}{unit}", key="sys.stack.size") == expected


@given(st.integers(0, 2**64 - 1))
def test_parse_size_accepts_ints(n: int) -> None:
    assert parse_size(n, key="k") == n


@given(st.text(max_size=30))
def test_parse_size_rejects_garbage(text: str) -> None:
    assume(re.fullmatch(r"[0-9]+[KMGkmg]?", text) is None)
    with pytest.raises(ManifestError) as info:
        parse_size(text, key="sys.brk.max_size")
    assert str(info.value).startswith("sys.brk.max_size:")


@pytest.mark.parametrize("value", ["18446744073709551616", "16777216T", "17179869184G",
                                   "1" * 5000, -1, True, 2**64, 1.0])
def test_parse_size_rejects_out_of_range_and_non_sizes(value: Any) -> None:
    with pytest.raises(ManifestError, match="^sgx.enclave_size:"):
        parse_size(value, key="sgx.enclave_size")


def test_parse_size_limits() -> None:
    assert parse_size("18446744073709551615", key="k") == 2**64 - 1
    assert parse_size("17179869183G", key="k") == 17179869183 * 2**30
    assert parse_size("256K", key="k") == 262144
    assert parse_size("0M", key="k") == 0
