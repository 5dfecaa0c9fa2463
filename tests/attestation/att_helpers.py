"""Shared pieces of the attestation tests: the signed python example, FUSE servers.

Servers run in subprocesses (the view with ``serve_view.py``, the configfs-tsm stand-in with
``tsm_standin.py``) so that the test process can do blocking I/O on their mounts; they are
always unmounted (``fusermount3 -u -z``) and stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from geodetest import View, copy_example, run, wait_ready

HERE = Path(__file__).resolve().parent

needs_fuse = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None,
    reason="real FUSE mounts need root, /dev/fuse and fusermount3",
)

_built: dict[str, Path] = {}


def signed_python(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Path:
    """examples/python built with ``RA_TYPE=dcap SGX_DEBUG=0`` and signed (once a session)."""
    if "python" not in _built:
        workdir = copy_example("python", tmp_path_factory.mktemp("att-python"))
        for script in (HERE / "shield_scripts").glob("*.py"):
            shutil.copy(script, workdir / "scripts" / script.name)
        run(["make", "SGX=1", "RA_TYPE=dcap", "SGX_DEBUG=0"], env, cwd=workdir)
        _built["python"] = workdir
    return _built["python"]


def sigstruct_view(sig: Path, env: dict[str, str]) -> dict[str, Any]:
    out = run(["gramine-sgx-sigstruct-view", "--output-format", "json", str(sig)], env).stdout
    return dict(json.loads(out))


def field(stdout: str, name: str) -> str:
    """The value of the line ``NAME: VALUE`` of a program's output."""
    for line in stdout.splitlines():
        if line.startswith(f"{name}: "):
            return line[len(name) + 2:]
    raise AssertionError(f"no {name!r} line in the output:\n{stdout}")


def quote_line(stdout: str) -> bytes:
    return bytes.fromhex(field(stdout, "quote"))


#: a FUSE server subprocess (the view or the configfs-tsm stand-in)
Server = View


def start_view(tmp: Path, tee: str, sig: Path | None = None, env: dict[str, str] | None = None
               ) -> Server:
    """A view of an empty root with the ``tee`` backend, mounted at ``tmp/mnt``."""
    root = tmp / "root"
    root.mkdir(exist_ok=True)
    manifest = tmp / "view.toml"
    manifest.write_text(tomli_w.dumps({"fs": {"root": {"uri": f"file:{root}"}}}))
    mnt = tmp / "mnt"
    mnt.mkdir()
    ready, log = tmp / "view.ready", tmp / "view.log"
    cmd = [sys.executable, str(HERE / "serve_view.py"), str(manifest), str(mnt), "--tee", tee,
           "--ready", str(ready)]
    if sig is not None:
        cmd += ["--sig", str(sig)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "wb"),  # noqa: SIM115
                            env=env)
    server = Server(mnt, proc, log)
    try:
        wait_ready(ready, proc, log)
    except BaseException:
        server.stop()
        raise
    return server


def start_standin(tmp: Path, provider: str, race: int = 0) -> tuple[Server, Path]:
    """The configfs-tsm stand-in at ``tmp/tsm``; returns it and its output (collateral) dir."""
    mnt, out = tmp / "tsm", tmp / "tsm-out"
    mnt.mkdir()
    ready, log = tmp / "tsm.ready", tmp / "tsm.log"
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "tsm_standin.py"), str(mnt), "--provider", provider,
         "--out", str(out), "--ready", str(ready), "--race", str(race)],
        stdout=subprocess.DEVNULL, stderr=open(log, "wb"))  # noqa: SIM115
    server = Server(mnt, proc, log)
    try:
        wait_ready(ready, proc, log)
    except BaseException:
        server.stop()
        raise
    return server, out
