"""``geode secret-prov serve``: the secret provisioning server (Gramine's
``secret_prov_server``), releasing a secret only to programs whose RA-TLS certificate and
measurement the policy accepts.

The policy comes from Gramine's ``RA_TLS_*`` variables (all four SGX-style ones must be set,
``any`` skips one) unless measurement options are given, in which case unset ones mean any;
the ``RA_TLS_ALLOW_*`` variables and the ``--allow-*`` options add up. The port defaults to
``SECRET_PROVISION_LISTENING_PORT``, else 4433. One log line per connection on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from geode.cli.common import Command, hex_arg, rtmr_arg
from geode.errors import GeodeError


def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("policy (default: the RA_TLS_* environment variables)")
    g.add_argument("--mrenclave", type=hex_arg, metavar="HEX",
                   help="Geode measurement (MRENCLAVE; on TDX/SNP the one the report data "
                   "binds)")
    g.add_argument("--mrsigner", type=hex_arg, metavar="HEX")
    g.add_argument("--isv-prod-id", type=int, metavar="N")
    g.add_argument("--isv-svn", type=int, metavar="N", help="minimum ISV SVN")
    g.add_argument("--mrtd", type=hex_arg, metavar="HEX", help="TDX: expected MRTD")
    g.add_argument("--rtmr", type=rtmr_arg, action="append", default=[], metavar="N=HEX",
                   help="TDX: expected RTMR N; repeat")
    g.add_argument("--snp-measurement", type=hex_arg, metavar="HEX",
                   help="SEV-SNP: expected launch measurement")
    g.add_argument("--allow-outdated-tcb", action="store_true",
                   help="as RA_TLS_ALLOW_OUTDATED_TCB_INSECURE=1")
    g.add_argument("--allow-hw-config-needed", action="store_true",
                   help="as RA_TLS_ALLOW_HW_CONFIG_NEEDED=1")
    g.add_argument("--allow-sw-hardening-needed", action="store_true",
                   help="as RA_TLS_ALLOW_SW_HARDENING_NEEDED=1")
    g.add_argument("--allow-debug", action="store_true",
                   help="as RA_TLS_ALLOW_DEBUG_ENCLAVE_INSECURE=1")
    g.add_argument("--allow-simulated", action="store_true",
                   help="accept Geode's simulated TEE (sim backend; no protection)")


def policy_from_args(args: argparse.Namespace) -> object:
    from geode.ratls.verify import RatlsPolicy

    explicit = any(x is not None for x in (args.mrenclave, args.mrsigner, args.isv_prod_id,
                                           args.isv_svn, args.mrtd, args.snp_measurement)
                   ) or bool(args.rtmr)
    policy = RatlsPolicy.from_env(require_measurements=not explicit)
    if explicit:
        policy.mr_enclave, policy.mr_signer = args.mrenclave, args.mrsigner
        policy.isv_prod_id, policy.isv_svn_min = args.isv_prod_id, args.isv_svn
        policy.mr_td, policy.snp_measurement = args.mrtd, args.snp_measurement
        policy.rtmrs = dict(args.rtmr)
    policy.allow_outdated_tcb |= args.allow_outdated_tcb
    policy.allow_hw_config_needed |= args.allow_hw_config_needed
    policy.allow_sw_hardening_needed |= args.allow_sw_hardening_needed
    policy.allow_debug |= args.allow_debug
    return policy


def _add(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    serve = sub.add_parser("serve", help="serve a secret to attested programs",
                           description="serve a secret to programs whose RA-TLS certificate "
                           "verifies and satisfies the policy")
    serve.add_argument("--cert", type=Path, required=True,
                       help="the server's certificate (PEM, issued by the CA the clients "
                       "trust: SECRET_PROVISION_CA_CHAIN_PATH)")
    serve.add_argument("--key", type=Path, required=True, help="its private key (PEM)")
    serve.add_argument("--secret", type=Path, required=True,
                       help="file holding the secret (raw bytes; 16 bytes for a key)")
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on")
    serve.add_argument("--port", type=int, default=None,
                       help="port (default SECRET_PROVISION_LISTENING_PORT, else 4433; 0: "
                       "any free port)")
    serve.add_argument("--collateral", action="append", type=Path, default=[],
                       metavar="DIR", help="collateral to verify evidence (repeat); for the "
                       "sim backend: geode tee sim-collateral DIR")
    serve.add_argument("--timeout", type=float, default=10.0,
                       help="seconds allowed for each step of a connection")
    add_policy_arguments(serve)


def _run(args: argparse.Namespace) -> int:
    from geode.ratls.server import SecretProvServer, server_context
    from geode.ratls.verify import RatlsPolicy, RatlsVerifier

    try:
        secret = args.secret.read_bytes()
    except OSError as e:
        raise GeodeError(f"cannot read the secret: {e.strerror}", where=str(args.secret)
                         ) from None
    port = args.port
    if port is None:
        env_port = os.environ.get("SECRET_PROVISION_LISTENING_PORT", "4433")
        if not env_port.isdigit():
            raise GeodeError(f"SECRET_PROVISION_LISTENING_PORT={env_port!r} is not a port")
        port = int(env_port)
    policy = policy_from_args(args)
    assert isinstance(policy, RatlsPolicy)
    verifier = RatlsVerifier(args.collateral, policy=policy,
                             allow_simulated=args.allow_simulated)
    server = SecretProvServer(secret, server_context(args.cert, args.key), verifier,
                              host=args.host, port=port, timeout=args.timeout)
    logger = logging.getLogger("geode.secret_prov")
    logger.setLevel(logging.INFO)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("secret-prov: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False

    async def main() -> None:
        try:
            await server.start()
        except OSError as e:
            raise GeodeError(f"cannot listen on {args.host}:{port}: {e.strerror}") from None
        logger.info("listening on %s:%d (policy: %s%s)", args.host, server.port,
                    policy.describe(), ", simulated TEE allowed" if args.allow_simulated
                    else "")
        await server.serve_forever()

    try:
        asyncio.run(main())
    finally:
        server.close()
    return 0


COMMAND = Command("secret-prov", "secret provisioning server for attested programs (RA-TLS)",
                  _add, _run)
