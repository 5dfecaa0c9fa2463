"""Starting a program loads only what starting it needs (start-up time is what users feel)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
from geodetest import run
from hypothesis import given
from hypothesis import strategies as st

from geode.cli import main

TEMPLATE = """\
libos.entrypoint = "/app"
fs.mounts = [{ path = "/app", uri = "file:app" }]
sgx.trusted_files = ["file:app"]
"""

#: Modules only some runs need: RA-TLS and secret provisioning, quote verification, RSA
#: (signing), TOML writing, importlib.metadata, the old FUSE stack, what only error messages
#: need (json, difflib), dataclasses (~0.7 ms per class, and it imports inspect), the socket
#: module's enums (the sandbox's control socket is a bare _socket.socket), the signal module
#: (its enums and their enum import cost ~3 ms; the sandbox and supervisor use _signal),
#: copy (only rendering applies defaults).
NOT_ON_THE_RUN_PATH = (
    "asyncio", "ssl", "cryptography.x509", "cryptography.hazmat.primitives.asymmetric.rsa",
    "geode.ratls", "geode.verify", "geode.cli.secret_prov", "geode.cli.quote", "tomli_w",
    "importlib.metadata", "trio", "pyfuse3", "json", "difflib", "dataclasses", "inspect",
    "socket", "signal", "copy",
)

LOAD = """\
import os, sys, types
from geode.cli import main
main.build_parser("run")
from geode.cli.run import load_for_run
manifest, path, identity, trusted = load_for_run(None, "app")
from geode.runtime.provision import provision_before_start
spec = types.SimpleNamespace(env={"PATH": "/bin"})
assert provision_before_start(spec, None, None, {}) is spec
if sys.argv[1] == "view":  # and the supervisor's view of it, with the "none" TEE backend
    from geode.runtime import supervisor, viewfs
    from geode.runtime.plan import ViewPlan
    from geode.tee import open_backend

    plan = ViewPlan.from_manifest(manifest, base_dir=os.path.dirname(os.path.abspath(path)),
                                  trusted=trusted)
    viewfs.ViewFS(plan, manifest, tee=open_backend("none", identity)).close()
print(" ".join(sorted(sys.modules)))
"""

#: What the supervisor does not need for a view without encrypted mounts or attestation
#: files: the thread-pool machinery, attestation pseudo-files, the protected-file format.
NOT_IN_A_PLAIN_VIEW = ("concurrent.futures", "geode.runtime.attestation", "geode.tee.sgx",
                       "geode.formats.pf")


def test_command_table_names_each_command() -> None:
    assert [c.name for c in main.COMMANDS] == [name for name, _, _ in main._COMMAND_SOURCES]


@given(st.lists(st.sampled_from(["app", "./python", "-c", "pass", "-", "--", "-h", "--help",
                                 "--manifest", "x=1", "-1", ""]), max_size=5))
def test_quick_parse_is_the_parser(argv: list[str]) -> None:
    from geode.cli import run as cli_run

    quick = cli_run.DIRECT.quick_parse
    assert quick is not None
    got = quick(argv)
    if got is not None:
        parser = argparse.ArgumentParser(prog="gramine-direct")
        cli_run.DIRECT.add_arguments(parser)
        assert vars(got) == vars(parser.parse_args(argv))


def test_provisioning_variable_named_once() -> None:
    from geode.ratls import secret_prov
    from geode.runtime import provision

    assert provision.ENV_CONSTRUCTOR == secret_prov.ENV_CONSTRUCTOR


@pytest.mark.parametrize(("signed", "what"), [(True, "load"), (False, "load"),
                                              (False, "view")])
def test_loading_a_manifest_imports_little(
    tmp_path: Path, geode_env: dict[str, str], signed: bool, what: str
) -> None:
    (tmp_path / "app").write_bytes(b"#!/bin/sh\necho app\n")
    (tmp_path / "app.manifest.template").write_text(TEMPLATE)
    run(["gramine-manifest", "app.manifest.template", "app.manifest"], geode_env, cwd=tmp_path)
    if signed:
        run(["gramine-sgx-sign", "-q", "-m", "app.manifest", "-o", "app.manifest.sgx"],
            geode_env, cwd=tmp_path)
    out = subprocess.run([sys.executable, "-c", LOAD, what], env=geode_env, cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout
    loaded = out.split()
    assert ("geode.runtime.viewfs" in loaded) == (what == "view")
    # An unsigned manifest (gramine-direct's usual one) needs no SIGSTRUCT or signing code.
    names = NOT_ON_THE_RUN_PATH + (() if signed else ("geode.signing", "geode.formats.sigstruct"))
    names += NOT_IN_A_PLAIN_VIEW if what == "view" else ()
    unwanted = [m for m in loaded
                if any(m == name or m.startswith(name + ".") for name in names)]
    assert unwanted == []


#: What a start whose manifest is remembered (geode.runtime.manifest_memo) does not load;
#: typing: the run path's records are geode.records.Record (typing ~4 ms to import).
NOT_ON_A_REMEMBERED_START = ("tomli", "tomllib", "geode.manifest.tomlio", "geode.manifest.schema",
                             "datetime", "typing")


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_a_remembered_manifest_is_neither_parsed_nor_checked(
    tmp_path: Path, geode_env: dict[str, str], signed: bool
) -> None:
    """gramine-manifest and gramine-sgx-sign leave what a start derives from the manifest
    they write in geode.cache, so even the first start after a build loads neither the TOML
    parser nor the schema. A manifest changed since (one byte) is parsed and checked again
    at its next start, and remembered from then on; with GEODE_NO_CACHE every start parses."""
    (tmp_path / "app").write_bytes(b"#!/bin/sh\necho app\n")
    (tmp_path / "app.manifest.template").write_text(TEMPLATE)
    run(["gramine-manifest", "app.manifest.template", "app.manifest"], geode_env, cwd=tmp_path)
    manifest = tmp_path / "app.manifest"
    if signed:
        run(["gramine-sgx-sign", "-q", "-m", "app.manifest", "-o", "app.manifest.sgx"],
            geode_env, cwd=tmp_path)

    def loaded(**env: str) -> list[str]:
        out = subprocess.run([sys.executable, "-c", LOAD, "load"], env=dict(geode_env, **env),
                             cwd=tmp_path, capture_output=True, text=True, check=True).stdout
        return [m for m in out.split() if m in NOT_ON_A_REMEMBERED_START]

    assert loaded() == []
    assert "geode.manifest.schema" in loaded(GEODE_NO_CACHE="1")
    if not signed:  # (a signed manifest's bytes cannot change without a new signature)
        manifest.write_text(manifest.read_text() + "\n# changed\n")
        assert "geode.manifest.schema" in loaded()
        assert loaded() == []


def test_a_run_loads_no_attestation_code_without_attestation_files(
    tmp_path: Path, geode_env: dict[str, str]
) -> None:
    """The "none" backend's /dev/attestation has only attestation_type: the supervisor does
    not load the per-process attestation machinery (nor the SGX structures it imports)."""
    (tmp_path / "app").write_bytes(b"#!/bin/sh\necho app\n")
    (tmp_path / "app").chmod(0o755)
    # (the app cannot start: /bin/sh is not in its view; the supervisor has run by then)
    (tmp_path / "app.manifest.template").write_text(TEMPLATE)
    run(["gramine-manifest", "app.manifest.template", "app.manifest"], geode_env, cwd=tmp_path)
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "geode.cli.main", "run",
                           "app"], env=geode_env, cwd=tmp_path, capture_output=True, text=True)
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")]
    assert "geode.runtime.supervisor" in imported, proc.stderr[-2000:]
    assert [m for m in imported if m in NOT_IN_A_PLAIN_VIEW] == []


QUIET_TEMPLATE = """\
libos.entrypoint = "/cat"
loader.log_level = "{{ log_level }}"
loader.env.LD_LIBRARY_PATH = "/lib"
loader.insecure__use_cmdline_argv = true
fs.mounts = [
  { path = "/lib", uri = "file:{{ gramine.runtimedir() }}" },
  { path = "/cat", uri = "file:/usr/bin/cat" },
  { path = "/other", uri = "file:/usr/bin/true" },
]
sgx.trusted_files = ["file:/usr/bin/cat", "file:{{ gramine.runtimedir() }}/"]
"""


@pytest.mark.parametrize("log_level", ["error", "warning"])
def test_a_quiet_run_loads_no_logging(
    tmp_path: Path, geode_env: dict[str, str], log_level: str
) -> None:
    """A run with nothing to log never imports logging (~7 ms of each start, see geode.log);
    one that has something to say at its level still says it. Neither imports pathlib."""
    (tmp_path / "cat.manifest.template").write_text(QUIET_TEMPLATE)
    run(["gramine-manifest", "-Dlog_level=" + log_level, "cat.manifest.template",
         "cat.manifest"], geode_env, cwd=tmp_path)
    # /other is neither trusted nor allowed: opening it is refused with a WARNING record.
    for args, status, logs in (([], 0, False), (["/other"], 1, log_level == "warning")):
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-c",
             "import sys; from geode.cli import gramine; sys.argv[0] = 'gramine-direct'; "
             "gramine.direct()", "cat", *args],
            env=geode_env, cwd=tmp_path, capture_output=True, text=True,
            stdin=subprocess.DEVNULL)
        records = [line for line in proc.stderr.splitlines()
                   if not line.startswith("import time:")]
        assert proc.returncode == status, records
        imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
                    if line.startswith("import time:")]
        assert "geode.runtime.supervisor" in imported
        assert "pathlib" not in imported  # (~5 ms with urllib.parse: a run builds no Path)
        # gramine-direct's start (its manifest remembered since gramine-manifest wrote it)
        # needs no typing (~4 ms to import) and no regular expression (~2 ms; the banner
        # about a verbose log level quotes it with json, which does)
        assert "typing" not in imported
        assert ("re" in imported) == (log_level != "error")
        assert ("logging" in imported) == logs, records
        assert any("/other" in line and "WARNING" in line for line in records) == logs, records


EXIT_REPORT = ("import gc, os, sys; real = os._exit; "
               "os._exit = lambda s: (print(gc.isenabled(), gc.get_freeze_count()), real(s)); ")


@pytest.mark.parametrize(("code", "frozen"), [
    (EXIT_REPORT + "from geode.cli import gramine; sys.argv[0] = 'gramine-direct'; "
     "gramine.direct()", True),
    (EXIT_REPORT + "from geode.cli import main; sys.argv[0] = 'geode'; "
     "sys.argv.insert(1, 'run'); main.main()", True),
    # a caller's process (argv given): its objects are not frozen on its behalf
    ("import gc, sys; from geode.cli import main; status = main.main(['run', 'cat']); "
     "print(gc.isenabled(), gc.get_freeze_count())", False),
], ids=["gramine-direct", "geode-run", "in-process"])
def test_a_run_freezes_its_start_up_objects(tmp_path: Path, geode_env: dict[str, str],
                                            code: str, frozen: bool) -> None:
    """A run command that owns its process loads the manifest with the cyclic collector
    off, then freezes what the start-up made (collections never walk it again) and turns
    the collector back on for the rest of the run."""
    (tmp_path / "cat.manifest.template").write_text(QUIET_TEMPLATE)
    run(["gramine-manifest", "-Dlog_level=error", "cat.manifest.template", "cat.manifest"],
        geode_env, cwd=tmp_path)
    proc = subprocess.run([sys.executable, "-c", code, "cat"], env=geode_env, cwd=tmp_path,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    # (the supervisor's is the last line: forked helpers leave through os._exit too)
    enabled, count = proc.stdout.splitlines()[-1].split()
    assert enabled == "True"
    assert (int(count) > 10_000) == frozen, count


def test_gramine_direct_parses_without_argparse(geode_env: dict[str, str]) -> None:
    """A plain ``gramine-direct APP ARGS`` never builds a parser, so argparse (and gettext)
    are not imported for a start."""
    code = ("import sys; from geode.cli import gramine, run; "
            "args = run.DIRECT.quick_parse(['app', '-c', 'x']); "
            "assert (args.app, args.args) == ('app', ['-c', 'x']); "
            "print('argparse' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=geode_env, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "False"
