"""Secret provisioning before the program starts (Gramine's ``SECRET_PROVISION_CONSTRUCTOR``).

In Gramine, ``libsecret_prov_attest.so`` preloaded with ``SECRET_PROVISION_CONSTRUCTOR=1``
provisions in an ELF constructor: before ``main``, inside the enclave, it makes an RA-TLS
certificate, gets the secret from the first of ``SECRET_PROVISION_SERVERS`` that grants it
(the server checked against ``SECRET_PROVISION_CA_CHAIN_PATH``), and either writes it to
``/dev/attestation/keys/NAME`` (``SECRET_PROVISION_SET_KEY=NAME``; 16 bytes) or exports it as
``SECRET_PROVISION_SECRET_STRING``; a failure ends the process.

Geode's supervisor does the same thing at the same point (before the program's first
instruction) with the same inputs: the variables are read from the program's environment
(``loader.env``, so they are part of the measurement); the RA-TLS certificate is made from the
run's TEE backend for the program's own identity (the evidence is exactly what the program
would get from ``/dev/attestation/quote``); the CA chain is read from the view path the
variable names, through the manifest's mounts, and must be a trusted file (its hash is
checked) or an allowed one; the key goes into the view's key table (``fs.keys``), so
encrypted mounts keyed by it open from the first access; the string goes into the program's
environment. A failure stops the run before the program starts, with one error line. No
``LD_PRELOAD`` is needed (nor possible: Gramine's library is not part of Geode).
"""

from __future__ import annotations

import hashlib
import hmac

from geode.errors import GeodeError
from geode.log import get_logger

TYPE_CHECKING = False
if TYPE_CHECKING:
    from geode.runtime.plan import ViewPlan
    from geode.runtime.process import ProcessSpec
    from geode.tee import TeeBackend

log = get_logger("geode")

#: geode.ratls.secret_prov.ENV_CONSTRUCTOR, named here so that checking it imports nothing
ENV_CONSTRUCTOR = "SECRET_PROVISION_CONSTRUCTOR"


def read_view_file(plan: ViewPlan, view_path: str, what: str) -> bytes:
    """A file of the view as the program would read it: trusted (hash checked) or allowed."""
    if not view_path.startswith("/"):
        raise GeodeError(f"{what}={view_path!r}: expected an absolute path in the shield")
    host = plan.host_path(view_path)
    if host is None:
        raise GeodeError(f"{what}={view_path}: not a file of a chroot mount")
    trusted = plan.trusted_paths.get(host)
    if trusted is None and not plan.is_allowed(host):
        raise GeodeError(f"{what}={view_path}: {host} is neither a trusted nor an allowed file")
    try:
        with open(host, "rb") as f:
            data = f.read()
    except OSError as e:
        raise GeodeError(f"{what}={view_path}: cannot read: {e.strerror}", where=host) from None
    if trusted is not None and not hmac.compare_digest(hashlib.sha256(data).hexdigest(),
                                                       trusted):
        raise GeodeError(f"{what}={view_path}: the file does not match its trusted hash",
                         where=host)
    return data


def provision_before_start(spec: ProcessSpec, plan: ViewPlan, backend: TeeBackend,
                           keys: dict[str, bytes]) -> ProcessSpec:
    """Run the provisioning the program's environment asks for; the spec to start."""
    env = spec.env
    if ENV_CONSTRUCTOR not in env:
        # Most programs do not provision: spare every start the RA-TLS client's imports
        # (ssl, cryptography.x509: ~35 ms).
        return spec
    from geode.ratls import secret_prov as sp

    if not sp.is_true(env.get(sp.ENV_CONSTRUCTOR)):
        return spec
    if not backend.has_quote:
        raise GeodeError(f"{sp.ENV_CONSTRUCTOR} needs attestation evidence, but the "
                         f"'{backend.name}' TEE backend has none: run with --tee sim|tdx|snp")
    ca_path = env.get(sp.ENV_CA_CHAIN)
    if not ca_path:
        raise GeodeError(f"{sp.ENV_CA_CHAIN} is required with {sp.ENV_CONSTRUCTOR}")
    ca_pem = read_view_file(plan, ca_path, sp.ENV_CA_CHAIN)
    servers = sp.parse_servers(env.get(sp.ENV_SERVERS))
    name = env.get(sp.ENV_SET_KEY)

    from geode.ratls.cert import backend_source, create

    creds = create(backend_source(backend), env=env)
    got = sp.provision_with(creds, ca_pem, servers)
    if name:
        keys[name] = sp.check_key(got.secret, name)
        log.info("secret provisioning: key %s set from %s", name, got.server)
        return spec
    text = sp.secret_string(got.secret)
    log.info("secret provisioning: %s set from %s", sp.ENV_SECRET_STRING, got.server)
    return spec._replace(env={**env, sp.ENV_SECRET_STRING: text})
