"""Insecure-configuration banner.

:func:`insecure_settings` lists the manifest settings that Gramine flags at start-up as unfit
for production (Gramine v1.9, ``libos/src/utils/warn.c``), plus Geode's simulated TEE. It is
lenient about types: only values that actually enable a setting are reported, so it can run on
a manifest that has not been checked yet.

Gramine's rules, as matched here:

* a log level other than ``none`` and ``error`` counts as verbose (``warning`` included);
* booleans count when they are ``true``;
* ``sgx.file_check_policy = "allow_all_but_log"``;
* ``fs.insecure__keys`` with at least one key.

One deliberate difference: Gramine warns as soon as ``sgx.allowed_files`` is present, even as an
empty array; Geode reports it only when it lists at least one file, since an empty list lets
nothing through. ``sgx.insecure__rpc_thread_num`` is not reported (Gramine does not warn about
it, and it has no effect in Geode). Gramine shows the banner only inside a TEE and only in the
first process; when to show it is the caller's decision.
"""

from __future__ import annotations

from collections.abc import Mapping

from geode.manifest.lookup import value_at

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["banner_text", "insecure_settings"]

_QUIET_LOG_LEVELS = ("none", "error")

# (dotted key, explanation) for booleans that are insecure when true, in report order
_INSECURE_FLAGS: tuple[tuple[str, str], ...] = (
    (
        "loader.insecure__use_cmdline_argv",
        "the program's arguments come from the untrusted host command line",
    ),
    (
        "loader.insecure__use_host_env",
        "the program's whole environment comes from the untrusted host",
    ),
    (
        "loader.insecure__disable_aslr",
        "address space layout randomization is turned off",
    ),
    (
        "sys.insecure__allow_eventfd",
        "eventfd is allowed (Gramine backs it by the untrusted host)",
    ),
    (
        "sys.experimental__enable_flock",
        "flock is enabled, an experimental feature",
    ),
    (
        "sgx.insecure__allow_memfaults_without_exinfo",
        "memory faults are accepted without the CPU's fault information (EXINFO)",
    ),
)


def insecure_settings(manifest: Mapping[str, Any]) -> list[str]:
    """One line per insecure setting in ``manifest``; empty when there is none."""
    lines: list[str] = []

    if value_at(manifest, "sgx.debug") is True:
        lines.append("sgx.debug = true: debug mode; the identity is marked as debuggable")

    log_level = value_at(manifest, "loader.log_level")
    if isinstance(log_level, str) and log_level not in _QUIET_LOG_LEVELS:
        import json  # not on every run's path

        lines.append(
            f"loader.log_level = {json.dumps(log_level)}: verbose logging can reveal "
            "what the program does and the data it handles"
        )

    for key, why in _INSECURE_FLAGS:
        if value_at(manifest, key) is True:
            lines.append(f"{key} = true: {why}")

    if value_at(manifest, "sgx.file_check_policy") == "allow_all_but_log":
        lines.append(
            'sgx.file_check_policy = "allow_all_but_log": files that are neither trusted nor '
            "allowed are used without verification (only logged)"
        )

    allowed = value_at(manifest, "sgx.allowed_files")
    if isinstance(allowed, list) and allowed:
        count = len(allowed)
        lines.append(
            f"sgx.allowed_files: {count} {'entry is' if count == 1 else 'entries are'} "
            "used without verification"
        )

    keys = value_at(manifest, "fs.insecure__keys")
    if isinstance(keys, Mapping) and keys:
        count = len(keys)
        lines.append(
            f"fs.insecure__keys: {count} encryption {'key is' if count == 1 else 'keys are'} "
            "written in the manifest, readable by anyone who has it"
        )

    if value_at(manifest, "geode.tee") == "sim":
        lines.append(
            'geode.tee = "sim": simulated TEE; its evidence is signed with a key kept on this '
            "host and proves nothing about the hardware"
        )

    return lines


def banner_text(lines: list[str]) -> str:
    """A framed, multi-line warning listing ``lines``; ``""`` when ``lines`` is empty."""
    if not lines:
        return ""
    rule = "=" * 78
    body = [
        rule,
        "WARNING: this manifest weakens the shield. Insecure settings:",
        "",
        *(f"  * {line}" for line in lines),
        "",
        "The program will run, but do not use this configuration in production.",
        rule,
    ]
    return "\n".join(body) + "\n"
