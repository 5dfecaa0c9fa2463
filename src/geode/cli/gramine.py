"""``gramine-*`` console scripts: Gramine's command names and flags over geode's commands.

Each script imports only its own command's module: ``gramine-direct`` starts a program, and
its start-up time should not pay for the manifest, signing and serializer commands.
"""

from __future__ import annotations

import gc

from geode.cli.common import exit_now, run_single

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn


def manifest() -> int:
    from geode.cli import manifest as _manifest

    return run_single("gramine-manifest", _manifest.MANIFEST)


def manifest_check() -> int:
    from geode.cli import manifest as _manifest

    return run_single("gramine-manifest-check", _manifest.MANIFEST_CHECK)


def sgx_sign() -> int:
    from geode.cli import signing as _signing

    return run_single("gramine-sgx-sign", _signing.SIGN)


def sgx_gen_private_key() -> int:
    from geode.cli import signing as _signing

    return run_single("gramine-sgx-gen-private-key", _signing.GEN_KEY)


def sgx_sigstruct_view() -> int:
    from geode.cli import signing as _signing

    return run_single("gramine-sgx-sigstruct-view", _signing.SIGSTRUCT_VIEW)


def argv_serializer() -> int:
    from geode.cli import argv_serializer as _argv

    return run_single("gramine-argv-serializer", _argv.COMMAND)


def direct() -> NoReturn:
    # No cyclic collections while the start-up's long-lived objects are made (modules, then
    # the manifest): the run command freezes them and turns the collector back on.
    gc.disable()
    from geode.cli import run as _run

    exit_now(run_single("gramine-direct", _run.DIRECT))


def sgx() -> int:
    from geode.cli import run as _run

    return run_single("gramine-sgx", _run.SGX)
