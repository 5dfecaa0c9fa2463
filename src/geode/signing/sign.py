"""gramine-sgx-sign: expand and re-verify trusted files, measure, and sign a SIGSTRUCT.

Also the reverse check the runtime does before it starts anything: a ``.manifest.sgx``
and its ``.sig`` belong together (valid SIGSTRUCT, ENCLAVEHASH equal to the Geode
measurement of the manifest bytes, attributes and ISV ids equal to the manifest's).
"""

from __future__ import annotations

import hmac
import os

from geode.errors import GeodeError, SigningError
from geode.formats import sigstruct
from geode.measurement import measure
from geode.records import Record
from geode.signing.attributes import sgx_attributes

TYPE_CHECKING = False
if TYPE_CHECKING:  # (pathlib and datetime at runtime only where signing needs them: a
    # run's checks of a signed manifest do not)
    import datetime
    from pathlib import Path
    from typing import Any


class Signed(Record):
    manifest: dict[str, Any]
    manifest_bytes: bytes
    sigstruct: sigstruct.Sigstruct
    dependencies: list[Path]


def parse_date(text: str) -> datetime.date:
    """``YYYY-MM-DD`` or ``today``, as Gramine's ``--date``."""
    import datetime

    if text == "today":
        return datetime.date.today()
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise GeodeError(f"bad date {text!r}: expected YYYY-MM-DD or 'today'") from None


def default_sigfile(manifest_path: Path) -> Path:
    """``app.manifest`` -> ``app.sig`` (Gramine's rule), else ``<name>.sig``."""
    name = manifest_path.name
    stem = name[: -len(".manifest")] if name.endswith(".manifest") else name
    return manifest_path.with_name(stem + ".sig")


def sign_manifest(
    manifest_path: Path,
    *,
    output: Path,
    key_path: Path,
    passphrase: bytes | None = None,
    sigfile: Path | None = None,
    date: datetime.date | None = None,
    chroot: Path | None = None,
    progress: bool | None = None,
) -> Signed:
    """Write ``output`` (.manifest.sgx) and the .sig; both or neither."""
    # Imported here: a run's checks of a signed manifest need none of these.
    from geode.fsutil import output_files
    from geode.manifest import build, schema, trusted
    from geode.signing.keys import load_private_key

    manifest = build.load(manifest_path)
    schema.check(manifest, source=str(manifest_path))
    # Re-hash every trusted file: a file changed since rendering is an error here.
    trusted.expand_trusted_files(manifest, chroot=chroot, progress=progress)
    data = build.dumps(manifest)
    key = load_private_key(key_path, passphrase)
    import datetime

    day = date or datetime.date.today()
    unsigned = sgx_attributes(manifest).apply(
        sigstruct.Sigstruct(
            date=sigstruct.encode_bcd_date(day.year, day.month, day.day),
            enclave_hash=measure(data),
        )
    )
    signed = sigstruct.sign(unsigned, key)
    sigfile = sigfile or default_sigfile(manifest_path)
    with output_files(output, sigfile) as (tmp_manifest, tmp_sig):
        tmp_manifest.write_bytes(data)
        tmp_sig.write_bytes(signed.pack())
    deps = [_host_path(e["uri"], chroot) for e in manifest["sgx"]["trusted_files"]]
    return Signed(manifest, data, signed, [*deps, key_path])


def _host_path(uri: str, chroot: Path | None) -> Path:
    from pathlib import Path

    path = Path(uri.removeprefix("file:"))
    return chroot / path.relative_to("/") if chroot and path.is_absolute() else path


def check_signed_manifest(
    manifest_path: str | os.PathLike[str], sig_path: str | os.PathLike[str]
) -> tuple[dict[str, Any], sigstruct.Sigstruct]:
    """Verify that ``sig_path`` signs exactly ``manifest_path`` under this Geode runtime."""
    from geode.manifest import build

    data, sig_bytes = read_signed(manifest_path, sig_path)
    sig = verify_signature(data, sig_bytes, sig_path=os.fspath(sig_path))
    manifest = build.loads(data, name=os.fspath(manifest_path))
    check_attributes(manifest, sig, sig_path=os.fspath(sig_path))
    return manifest, sig


def read_signed(manifest_path: str | os.PathLike[str], sig_path: str | os.PathLike[str]
                ) -> tuple[bytes, bytes]:
    """The bytes of a signed manifest and of its .sig."""
    try:
        with open(sig_path, "rb") as f:
            sig_bytes = f.read()
        with open(manifest_path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise SigningError(f"cannot read: {e.strerror}", where=e.filename) from None
    return data, sig_bytes


def verify_signature(data: bytes, sig_bytes: bytes, *, sig_path: str) -> sigstruct.Sigstruct:
    """The SIGSTRUCT ``sig_bytes`` if it is validly signed and its ENCLAVEHASH is the
    measurement of the manifest bytes ``data`` under this runtime."""
    result = sigstruct.verify(sig_bytes)
    if not result.ok:
        failed = "; ".join(f"{c.name}: {c.reason}" for c in result.failed)
        raise SigningError(f"invalid SIGSTRUCT ({failed})", where=sig_path)
    sig = result.sigstruct
    assert sig is not None
    expected = measure(data)
    if not hmac.compare_digest(sig.enclave_hash, expected):
        raise SigningError(
            f"measurement mismatch: signed {sig.enclave_hash.hex()}, manifest and runtime "
            f"measure {expected.hex()} (manifest changed, or a different Geode runtime)",
            where=sig_path,
        )
    return sig


def check_attributes(manifest: dict[str, Any], sig: sigstruct.Sigstruct, *,
                     sig_path: str) -> None:
    """The SIGSTRUCT's attributes and ISV ids must be those the manifest asks for."""
    if sgx_attributes(manifest).apply(sig) != sig:
        raise SigningError("attributes or ISV ids differ from the manifest", where=sig_path)
