#!/usr/bin/env python3
"""Regenerate docs/manifest.md from the schema table (tests check that it is current)."""

from __future__ import annotations

import sys
from pathlib import Path

from geode.manifest.schema import schema_reference_markdown

INTRO = """\
# Manifest reference

Geode reads Gramine v1.9 manifests unchanged: TOML rendered from a Jinja2 template by
`gramine-manifest` (with `gramine.*`, `python.*`, `env` and `ldd()` available to templates),
then expanded (every trusted file hashed) and signed by `gramine-sgx-sign`.

Every key below is checked by `gramine-manifest`, `gramine-manifest-check` and at start;
an unknown or mistyped key is an error naming the key. The *In Geode* column says what
Geode does with each key:

- **enforced**: the runtime implements Gramine's meaning;
- **identity only**: the value goes into the signed manifest, the SIGSTRUCT and attestation
  evidence (so verifiers see it), but has no run-time mechanism in Geode;
- **accepted, no effect**: kept so that Gramine manifests work unchanged; it has no meaning
  without an SGX enclave.

Geode's own keys live under `geode.*` and nowhere else.

This page is generated from `src/geode/manifest/schema.py` by
`scripts/gen-manifest-doc.py`.

"""


def render() -> str:
    return INTRO + schema_reference_markdown() + "\n"


if __name__ == "__main__":
    target = Path(__file__).resolve().parent.parent / "docs" / "manifest.md"
    if "--check" in sys.argv:
        sys.exit(0 if target.read_text() == render() else 1)
    target.write_text(render())
