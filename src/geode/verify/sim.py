"""Markers of Geode's simulated TEE evidence (the ``sim`` backend), shared with verifiers.

Simulated evidence is recognisable three ways, and any one marks a result ``simulated``:

* the quote header's QE vendor id is :data:`SIM_QE_VENDOR_ID` (not Intel's);
* its PCK chain ends at a simulation root CA given to the verifier as ``simulation_roots``;
* a certificate of the chain carries :data:`SIMULATION_OU` as a subject OU.

A verifier trusts a simulation root only when built with ``allow_simulated=True``. The sim
backend's certificates follow Intel's naming where the verifier relies on it: the PCK leaf's
CN contains "SGX PCK Certificate" and carries the SGX extension (see
:func:`geode.verify.pki.encode_sgx_extension`), and the certificate that signs the TCB info
and QE identity is issued directly by the root and has a CN ending in "TCB Signing".
"""

from __future__ import annotations

from geode.verify.pki import SIMULATION_OU

SIM_QE_VENDOR_ID = b"GEODE-SIMULATED\x00"
assert len(SIM_QE_VENDOR_ID) == 16

__all__ = ["SIMULATION_OU", "SIM_QE_VENDOR_ID"]
