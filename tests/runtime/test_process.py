"""argv, environment, identity and limits derived from a manifest (pure, no processes)."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geode.cli.argv_serializer import serialize_argv
from geode.errors import GeodeError, ManifestError
from geode.runtime.process import (
    DEFAULT_ENCLAVE_SIZE,
    DEFAULT_ENCLAVE_SIZE_EDMM,
    DEFAULT_FDS_LIMIT,
    DEFAULT_MAX_THREADS,
    DEFAULT_STACK_SIZE,
    build_env,
    build_limits,
    entrypoint_path,
    parse_serialized,
    parse_size,
    process_spec,
    resolve_argv,
    resolve_env,
    serialize,
)

ENTRY = "/usr/bin/app"


@pytest.fixture(autouse=True)
def _geode_log_reaches_caplog(monkeypatch: pytest.MonkeyPatch) -> None:
    # run() configures the "geode" logger not to propagate; caplog listens at the root.
    monkeypatch.setattr(logging.getLogger("geode"), "propagate", True)
    monkeypatch.setattr(logging.getLogger("geode"), "level", logging.NOTSET)


def manifest(**sections: Any) -> dict[str, Any]:
    m: dict[str, Any] = {"libos": {"entrypoint": ENTRY}, "fs": {"mounts": []}}
    for name, table in sections.items():
        m.setdefault(name, {}).update(table)
    return m


# -------------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    ("value", "expected"),
    [("256M", 256 << 20), ("1G", 1 << 30), ("4k", 4096), ("17", 17), (123, 123), ("0", 0),
     ("2g", 2 << 30)],
)
def test_parse_size(value: object, expected: int) -> None:
    assert parse_size(value, key="k") == expected


@pytest.mark.parametrize("value", ["1T", "abc", "", "-1", "1.5G", " 1G", True, None, 1.0, -5])
def test_parse_size_rejects(value: object) -> None:
    with pytest.raises(ManifestError) as e:
        parse_size(value, key="sys.stack.size")
    assert "sys.stack.size" in str(e.value)


_SIZE_TEXT = st.one_of(
    st.text(alphabet="0123456789KMGkmgT٣²+- .x", max_size=24),
    st.from_regex(r"[0-9]{1,24}[KMGkmg]?", fullmatch=True),
)


@given(_SIZE_TEXT)
def test_parse_size_is_the_documented_grammar(text: str) -> None:
    """ASCII decimal digits (at most 20) and an optional K/M/G of either case, as the
    regular expression this parser replaced said; no other digits, signs or spaces."""
    match = re.fullmatch(r"([0-9]+)([KMGkmg]?)", text)
    if match is None or len(match.group(1)) > 20:
        with pytest.raises(ManifestError):
            parse_size(text, key="k")
        return
    size = int(match.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[
        match.group(2).upper()]
    if size >= 1 << 64:
        with pytest.raises(ManifestError, match="out of range"):
            parse_size(text, key="k")
    else:
        assert parse_size(text, key="k") == size


# -------------------------------------------------------------------------------- argv


def test_argv_default_is_entrypoint() -> None:
    assert resolve_argv(manifest(), [], base_dir=Path("/")) == [ENTRY]


def test_argv_default_refuses_host_args() -> None:
    # Gramine's loader fails ("argv handling wasn't configured ...") rather than run
    # something other than what was typed.
    with pytest.raises(ManifestError) as e:
        resolve_argv(manifest(), ["--flag"], base_dir=Path("/"))
    assert "loader.argv" in str(e.value)
    assert "\n" not in str(e.value)


def test_argv_from_manifest_discards_host_args(caplog: pytest.LogCaptureFixture) -> None:
    m = manifest(loader={"argv": ["app", "-x", "1"]})
    with caplog.at_level(logging.ERROR, logger="geode"):
        assert resolve_argv(m, ["--evil"], base_dir=Path("/")) == ["app", "-x", "1"]
    assert any("--evil" in r.getMessage() and r.levelno == logging.ERROR
               for r in caplog.records)


def test_argv_from_manifest_no_log_without_host_args(caplog: pytest.LogCaptureFixture) -> None:
    m = manifest(loader={"argv": ["app"]})
    with caplog.at_level(logging.DEBUG, logger="geode"):
        assert resolve_argv(m, [], base_dir=Path("/")) == ["app"]
    assert not caplog.records


@pytest.mark.parametrize("bad", [[], "app", ["app", 3], ["a\0b"]])
def test_argv_bad_manifest_argv(bad: object) -> None:
    with pytest.raises(ManifestError) as e:
        resolve_argv(manifest(loader={"argv": bad}), [], base_dir=Path("/"))
    assert "loader.argv" in str(e.value)


def test_cmdline_argv_uses_entrypoint_as_argv0() -> None:
    m = manifest(loader={"insecure__use_cmdline_argv": True})
    assert resolve_argv(m, ["a", "b c"], base_dir=Path("/")) == [ENTRY, "a", "b c"]
    assert resolve_argv(m, [], base_dir=Path("/")) == [ENTRY]


def test_cmdline_argv_false_is_not_set() -> None:
    m = manifest(loader={"insecure__use_cmdline_argv": False, "argv": ["x"]})
    assert resolve_argv(m, [], base_dir=Path("/")) == ["x"]


@pytest.mark.parametrize(
    "loader",
    [
        {"argv": ["a"], "argv_src_file": "file:args"},
        {"argv": ["a"], "insecure__use_cmdline_argv": True},
        {"argv_src_file": "file:args", "insecure__use_cmdline_argv": True},
    ],
)
def test_argv_sources_mutually_exclusive(loader: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "args").write_bytes(serialize(["a"]))
    with pytest.raises(ManifestError) as e:
        resolve_argv(manifest(loader=loader), [], base_dir=tmp_path)
    assert "mutually exclusive" in str(e.value)


def test_argv_src_file_matches_gramine_argv_serializer(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    args = ["/bin/prog", "", "two words", "ünïcode", "--x=1"]
    # The CLI's gramine-argv-serializer and this module agree on the format.
    assert serialize_argv(args) == serialize(args)
    (tmp_path / "trusted_argv").write_bytes(serialize_argv(args))
    m = manifest(loader={"argv_src_file": "file:trusted_argv"})
    with caplog.at_level(logging.ERROR, logger="geode"):
        assert resolve_argv(m, ["ignored"], base_dir=tmp_path) == args
    assert any("ignored" in r.getMessage() for r in caplog.records)


def test_argv_src_file_checked_against_trusted_hash(tmp_path: Path) -> None:
    data = serialize(["prog", "arg"])
    f = tmp_path / "argv"
    f.write_bytes(data)
    good = {str(f): hashlib.sha256(data).hexdigest()}  # (keyed by host path strings)
    m = manifest(loader={"argv_src_file": f"file:{f}"})
    assert resolve_argv(m, [], base_dir=Path("/"), trusted=good) == ["prog", "arg"]
    f.write_bytes(serialize(["prog", "evil"]))
    with pytest.raises(ManifestError) as e:
        resolve_argv(m, [], base_dir=Path("/"), trusted=good)
    assert "loader.argv_src_file" in str(e.value) and "trusted" in str(e.value)


def test_argv_src_file_untrusted_logs_warning(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "a").write_bytes(serialize(["p"]))
    with caplog.at_level(logging.WARNING, logger="geode"):
        resolve_argv(manifest(loader={"argv_src_file": "file:a"}), [], base_dir=tmp_path)
    assert any("not a trusted file" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("content", "msg"), [(b"", "empty"), (b"prog", "NUL"),
                                               (b"a\0b", "NUL")])
def test_argv_src_file_malformed(tmp_path: Path, content: bytes, msg: str) -> None:
    (tmp_path / "a").write_bytes(content)
    with pytest.raises(ManifestError) as e:
        resolve_argv(manifest(loader={"argv_src_file": "file:a"}), [], base_dir=tmp_path)
    assert msg in str(e.value) and "loader.argv_src_file" in str(e.value)


def test_argv_src_file_missing_and_bad_uri(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as e:
        resolve_argv(manifest(loader={"argv_src_file": "file:nope"}), [], base_dir=tmp_path)
    assert "nope" in str(e.value)
    with pytest.raises(ManifestError):
        resolve_argv(manifest(loader={"argv_src_file": "http://x"}), [], base_dir=tmp_path)


def test_serialized_round_trip() -> None:
    items = ["a", "", "b=c", "\udcff"]
    assert parse_serialized(serialize(items), key="k") == items
    assert parse_serialized(b"", key="k") == []


# -------------------------------------------------------------------------------- environment


HOST = [("HOME", "/root"), ("PATH", "/host/bin"), ("SECRET", "s3"), ("LANG", "C.UTF-8")]


def test_env_default_is_only_manifest_values() -> None:
    m = manifest(loader={"env": {"PATH": "/usr/bin", "A": {"value": "1"}}})
    assert build_env(m, HOST, propagate=False) == {"PATH": "/usr/bin", "A": "1"}


def test_env_passthrough_takes_host_value() -> None:
    m = manifest(loader={"env": {"LANG": {"passthrough": True},
                                 "MISSING": {"passthrough": True}}})
    assert build_env(m, HOST, propagate=False) == {"LANG": "C.UTF-8"}


def test_env_host_env_with_overrides_in_order() -> None:
    m = manifest(loader={"env": {"PATH": "/usr/bin", "NEW": "n"}})
    env = build_env(m, HOST, propagate=True)
    assert env == {"HOME": "/root", "SECRET": "s3", "LANG": "C.UTF-8", "PATH": "/usr/bin",
                   "NEW": "n"}
    assert list(env)[:3] == ["HOME", "SECRET", "LANG"]


@pytest.mark.parametrize(
    "spec",
    [{"passthrough": False}, {"passthrough": True, "value": "x"}, {}, {"value": 3},
     {"passthrough": "yes"}, 5, ["x"], {"value": "a", "other": 1}, "a\0b"],
)
def test_env_bad_specs(spec: object) -> None:
    with pytest.raises(ManifestError) as e:
        build_env(manifest(loader={"env": {"VAR": spec}}), HOST, propagate=False)
    assert "loader.env.VAR" in str(e.value)


def test_env_src_file_overridden_by_manifest(tmp_path: Path) -> None:
    (tmp_path / "env").write_bytes(serialize(["A=from-file", "B=b=with=equals", "C="]))
    m = manifest(loader={"env_src_file": "file:env", "env": {"A": "manifest"}})
    env = resolve_env(m, dict(HOST), base_dir=tmp_path)
    # host variables are not used at all when the environment comes from a file
    assert env == {"B": "b=with=equals", "C": "", "A": "manifest"}


def test_env_src_file_passthrough_reads_the_file(tmp_path: Path) -> None:
    (tmp_path / "env").write_bytes(serialize(["LANG=from-file"]))
    m = manifest(loader={"env_src_file": "file:env", "env": {"LANG": {"passthrough": True}}})
    assert resolve_env(m, dict(HOST), base_dir=tmp_path) == {"LANG": "from-file"}


def test_env_src_file_bad_entry(tmp_path: Path) -> None:
    (tmp_path / "env").write_bytes(serialize(["NOEQUALS"]))
    with pytest.raises(ManifestError) as e:
        resolve_env(manifest(loader={"env_src_file": "file:env"}), {}, base_dir=tmp_path)
    assert "NOEQUALS" in str(e.value)


def test_env_src_file_and_host_env_exclusive(tmp_path: Path) -> None:
    (tmp_path / "env").write_bytes(b"")
    m = manifest(loader={"env_src_file": "file:env", "insecure__use_host_env": True})
    with pytest.raises(ManifestError) as e:
        resolve_env(m, {}, base_dir=tmp_path)
    assert "mutually exclusive" in str(e.value)


def test_env_use_host_env() -> None:
    m = manifest(loader={"insecure__use_host_env": True, "env": {"X": "1"}})
    assert resolve_env(m, {"A": "a"}, base_dir=Path("/")) == {"A": "a", "X": "1"}


# -------------------------------------------------------------------------------- limits


def test_limits_defaults() -> None:
    lim = build_limits(manifest())
    assert (lim.stack, lim.nofile, lim.address_space, lim.tasks) == (
        DEFAULT_STACK_SIZE, DEFAULT_FDS_LIMIT, DEFAULT_ENCLAVE_SIZE, None)
    lim = build_limits(manifest(sys={"disallow_subprocesses": True}))
    assert lim.tasks == DEFAULT_MAX_THREADS
    assert DEFAULT_STACK_SIZE == 256 * 1024 and DEFAULT_ENCLAVE_SIZE == 256 << 20


def test_limits_from_manifest() -> None:
    m = manifest(sys={"stack": {"size": "8M"}, "fds": {"limit": 4096},
                      "disallow_subprocesses": True},
                 sgx={"enclave_size": "2G", "max_threads": 16})
    lim = build_limits(m)
    assert (lim.stack, lim.nofile, lim.address_space, lim.tasks) == (8 << 20, 4096, 2 << 30, 16)


def test_limits_edmm_has_no_thread_limit_and_big_default() -> None:
    lim = build_limits(manifest(sgx={"edmm_enable": True, "max_threads": 1},
                                sys={"disallow_subprocesses": True}))
    assert lim.tasks is None
    assert lim.address_space == DEFAULT_ENCLAVE_SIZE_EDMM


@pytest.mark.parametrize(
    ("section", "key"),
    [({"sys": {"stack": {"size": "1K"}}}, "sys.stack.size"),
     ({"sys": {"fds": {"limit": "many"}}}, "sys.fds.limit"),
     ({"sgx": {"enclave_size": "1M"}}, "sgx.enclave_size"),
     ({"sgx": {"max_threads": 0}}, "sgx.max_threads"),
     ({"sgx": {"edmm_enable": "yes"}}, "sgx.edmm_enable")],
)
def test_limits_errors_name_the_key(section: dict[str, Any], key: str) -> None:
    with pytest.raises(GeodeError) as e:
        build_limits(manifest(**section))
    assert key in str(e.value)


# -------------------------------------------------------------------------------- together


def test_entrypoint_relative_to_start_dir() -> None:
    assert entrypoint_path({"libos": {"entrypoint": "app"}}, "/srv/x") == "/srv/x/app"
    assert entrypoint_path({"libos": {"entrypoint": "file:/bin/sh"}}) == "/bin/sh"
    assert entrypoint_path({"libos": {"entrypoint": "../b"}}, "/a/c") == "/a/b"
    with pytest.raises(ManifestError) as e:
        entrypoint_path({"libos": {}})
    assert "libos.entrypoint" in str(e.value)


def test_process_spec(tmp_path: Path) -> None:
    m = manifest(
        loader={"uid": 1000, "gid": 1001, "env": {"X": "1"}, "insecure__disable_aslr": True},
        fs={"start_dir": "/srv/./app/"},
        sys={"disallow_subprocesses": True, "enable_sigterm_injection": True},
    )
    m["libos"]["entrypoint"] = "run.sh"
    spec = process_spec(m, [], base_dir=tmp_path, host_env={"SECRET": "x"})
    assert spec.path == "/srv/app/run.sh"
    assert spec.argv == ("run.sh",)
    assert dict(spec.env) == {"X": "1"}
    assert (spec.uid, spec.gid, spec.start_dir) == (1000, 1001, "/srv/app")
    assert spec.disallow_subprocesses and spec.sigterm_injection and spec.disable_aslr
    assert spec.hostname == "localhost"


@pytest.mark.parametrize(("key", "value"), [("uid", -1), ("gid", "0"), ("uid", True)])
def test_process_spec_bad_ids(key: str, value: object, tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as e:
        process_spec(manifest(loader={key: value}), [], base_dir=tmp_path, host_env={})
    assert f"loader.{key}" in str(e.value)


def test_hostname_from_host_when_asked(tmp_path: Path) -> None:
    import os

    m = manifest(sys={"enable_extra_runtime_domain_names_conf": True})
    assert process_spec(m, [], base_dir=tmp_path, host_env={}).hostname == os.uname().nodename
