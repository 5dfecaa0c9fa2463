"""A program that provisions itself with the Python API (geode.ratls.secret_prov), from its
own RA-TLS certificate made through /dev/attestation."""

import os

from geode.ratls.secret_prov import provision

secret = provision(servers=os.environ.get("SECRET_PROVISION_SERVERS"),
                   ca_chain_path=os.environ["SECRET_PROVISION_CA_CHAIN_PATH"])
with open("/dev/attestation/keys/default", "rb") as f:
    key = f.read()
print("self-provisioned", len(secret), "bytes; same as the constructor's key:", secret == key)
