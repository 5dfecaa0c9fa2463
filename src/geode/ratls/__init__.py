"""RA-TLS: TLS certificates that carry attestation evidence, and secret provisioning over them.

:mod:`~geode.ratls.cert` creates certificates (Gramine's format: ECDSA P-384, self-signed,
evidence under the TCG DICE OID or the legacy Gramine OID); :mod:`~geode.ratls.verify` checks
them (evidence, binding, policy); :mod:`~geode.ratls.tls` holds the ``ssl`` plumbing;
:mod:`~geode.ratls.secret_prov` is the provisioning server and client (Gramine's wire
protocol). See docs/ratls.md.

This package is also what a program *inside* the shield imports (the example mounts it
read-only and trusted): :mod:`~geode.ratls.cert` and the client half of
:mod:`~geode.ratls.secret_prov` need only the standard library, ``cryptography`` (38 or
newer, as Debian 12 ships it) and ``cbor2``.
"""
