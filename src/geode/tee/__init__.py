"""TEE backends: what a program's identity is bound to, and what can derive keys for it.

A backend is chosen explicitly (``geode run --tee``, ``geode.tee`` in the manifest) and never
substituted: a manifest that asks for remote attestation with no backend that provides it does
not start (see :func:`geode.cli.run.choose_tee`).

=========  ============================================================================
``none``   no evidence; no sealing keys (as gramine-direct)
``sim``    software TEE for development and CI: SGX-format reports and DCAP-format quotes
           signed by a per-installation simulation authority, sealing keys derived from a
           per-installation platform secret; everything it emits says it is simulated
``tdx``    Intel TDX guest: evidence through Linux configfs-tsm
``snp``    AMD SEV-SNP guest: evidence through Linux configfs-tsm
=========  ============================================================================

What a backend offers the view (``/dev/attestation``, see :mod:`geode.runtime.attestation`):
``attestation_type``; :meth:`TeeBackend.evidence` behind ``quote`` when the type is not
``none``; :meth:`TeeBackend.my_target_info` and :meth:`TeeBackend.report` behind
``my_target_info``, ``target_info`` and ``report`` when :attr:`TeeBackend.local_attestation`
(SGX-format local attestation: ``sim`` only). The constructions are in docs/attestation.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from geode.errors import GeodeError
from geode.records import Record

TYPE_CHECKING = False
if TYPE_CHECKING:  # an unsigned manifest's run needs no SIGSTRUCT code
    from typing import Any

    from geode.formats.sigstruct import Sigstruct

#: Names of the sealing keys under /dev/attestation/keys, as in Gramine.
SEAL_KEY_NAMES = ("_sgx_mrenclave", "_sgx_mrsigner")


class EnclaveIdentity(Record):
    """The identity evidence binds: the Geode measurement and, when signed, its SIGSTRUCT.

    ``manifest`` is the manifest measured (left out of the repr: it can list 10,000 files).
    """

    measurement: bytes
    sigstruct: Sigstruct | None = None
    manifest: Mapping[str, Any] = MappingProxyType({})

    def __repr__(self) -> str:
        return f"EnclaveIdentity(measurement={self.measurement!r}, sigstruct={self.sigstruct!r})"

    @property
    def mrsigner(self) -> bytes:
        return self.sigstruct.mrsigner if self.sigstruct else bytes(32)

    @property
    def isv_prod_id(self) -> int:
        return self.sigstruct.isv_prod_id if self.sigstruct else 0

    @property
    def isv_svn(self) -> int:
        return self.sigstruct.isv_svn if self.sigstruct else 0


class Evidence(Record):
    """What ``/dev/attestation/quote`` returns, and certificates that came with it."""

    quote: bytes
    #: PEM certificates delivered with the evidence (SEV-SNP: the host's VCEK/VLEK, ASK and
    #: ARK from configfs-tsm's auxblob); empty when there are none
    certs: bytes = b""


class TeeBackend:
    """The ``none`` backend; the base of the others."""

    name = "none"
    #: value of /dev/attestation/attestation_type
    attestation_type = "none"
    #: SGX-format local attestation (target_info, my_target_info, report)
    local_attestation = False
    #: evidence comes with certificates (/dev/attestation/certs)
    evidence_certs = False

    def __init__(self, identity: EnclaveIdentity) -> None:
        self.identity = identity

    @property
    def has_quote(self) -> bool:
        """Whether ``/dev/attestation/quote`` exists (as in Gramine: type is not none)."""
        return self.attestation_type != "none"

    def evidence(self, user_report_data: bytes) -> Evidence:
        """Remote-attestation evidence binding ``user_report_data`` (64 bytes)."""
        raise GeodeError(f"the '{self.name}' TEE backend produces no attestation evidence")

    def my_target_info(self) -> bytes:
        """This program's 512-byte SGX TARGETINFO."""
        raise GeodeError(f"the '{self.name}' TEE backend has no SGX local attestation")

    def report(self, user_report_data: bytes, target_info: bytes) -> bytes:
        """A 432-byte SGX REPORT for the enclave named by ``target_info``."""
        raise GeodeError(f"the '{self.name}' TEE backend has no SGX local attestation")

    def seal_key(self, name: str) -> bytes:
        """The 16-byte sealing key ``name`` (one of :data:`SEAL_KEY_NAMES`)."""
        raise GeodeError(
            f"the '{self.name}' TEE backend cannot derive sealing key {name}: "
            "use --tee sim (development) or a hardware backend, or provision a key"
        )


def open_backend(name: str, identity: EnclaveIdentity) -> TeeBackend:
    """The backend called ``name`` for a program of ``identity``."""
    if name == "none":
        return TeeBackend(identity)
    if name == "sim":
        from geode.tee.sim import SimBackend

        return SimBackend(identity)
    if name in ("tdx", "snp"):
        from geode.tee.tsm import TsmBackend

        return TsmBackend(name, identity)
    raise GeodeError(f"unknown TEE backend {name!r} (expected none, sim, tdx or snp)")
