"""Geode: Gramine's contract (manifests, trusted and encrypted files, attestation)
on kernel mechanisms."""

__version__ = "0.1.0"
