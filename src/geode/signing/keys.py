"""SGX enclave signing keys: RSA-3072 with public exponent 3, stored as PEM.

Same defaults as Gramine: the key lives at ``$XDG_CONFIG_HOME/gramine/enclave-key.pem``
(``~/.config`` when XDG_CONFIG_HOME is unset) and is written as an unencrypted
"traditional OpenSSL" PEM (``-----BEGIN RSA PRIVATE KEY-----``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from geode.errors import SigningError

KEY_SIZE_BITS = 3072
PUBLIC_EXPONENT = 3
KEY_FILE_MODE = 0o600


def default_key_path() -> Path:
    """``$XDG_CONFIG_HOME/gramine/enclave-key.pem`` (``~/.config`` if that is unset or empty)."""
    config_home = os.environ.get("XDG_CONFIG_HOME")
    base = Path(config_home) if config_home else Path.home() / ".config"
    return base / "gramine" / "enclave-key.pem"


def generate_private_key(path: Path, *, force: bool = False) -> None:
    """Create a new RSA-3072, e=3 key as PEM at *path*, mode 0600.

    Missing parent directories are created (mode 0700). The file is written to a temporary
    file in the same directory and then moved into place, so *path* never holds a partial key.
    Without *force* an existing *path* is never replaced (SigningError).
    """
    path = Path(path)
    if path.is_dir():
        raise SigningError("is a directory, not a key file", where=str(path))
    if not force and os.path.lexists(path):
        raise SigningError("refusing to overwrite existing key (use force)", where=str(path))

    key = rsa.generate_private_key(public_exponent=PUBLIC_EXPONENT, key_size=KEY_SIZE_BITS)
    pem = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.TraditionalOpenSSL,
        encryption_algorithm=serialization.NoEncryption(),
    )

    directory = path.parent
    try:
        _make_private_dirs(directory)
    except OSError as e:
        raise SigningError(
            f"cannot create directory {directory}: {e.strerror or e}", where=str(path)
        ) from e

    tmp_name: str | None = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
        # mkstemp creates the file 0600 already; be explicit in case of an odd umask handling.
        os.fchmod(fd, KEY_FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        if force:
            os.replace(tmp_name, path)
        else:
            _move_no_clobber(tmp_name, path)
        tmp_name = None
        _fsync_dir(directory)
    except FileExistsError as e:
        raise SigningError("refusing to overwrite existing key (use force)", where=str(path)) from e
    except OSError as e:
        raise SigningError(f"cannot write key: {e.strerror or e}", where=str(path)) from e
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)


def _make_private_dirs(directory: Path) -> None:
    """Create *directory* and its missing parents, each mode 0700 (as Gramine's umask 077)."""
    missing: list[Path] = []
    current = directory
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            if not d.is_dir():
                raise


def _move_no_clobber(tmp_name: str, path: Path) -> None:
    """Move *tmp_name* to *path*, failing with FileExistsError if *path* exists."""
    try:
        os.link(tmp_name, path)  # atomic and never replaces an existing file
    except FileExistsError:
        raise
    except OSError:
        # File systems without hard links: check, then replace (a small race remains).
        if os.path.lexists(path):
            raise FileExistsError(str(path)) from None
        os.replace(tmp_name, path)
        return
    os.unlink(tmp_name)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def load_private_key(path: Path, passphrase: bytes | None = None) -> rsa.RSAPrivateKey:
    """Load a PEM private key usable for SGX signing (RSA, 3072 bits, exponent 3).

    Every problem (missing or unreadable file, not a PEM private key, missing or wrong
    passphrase, not RSA, wrong size or exponent) is a SigningError naming *path*.
    """
    path = Path(path)
    where = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise SigningError("key file not found", where=where) from e
    except IsADirectoryError as e:
        raise SigningError("is a directory, not a key file", where=where) from e
    except OSError as e:
        raise SigningError(f"cannot read key file: {e.strerror or e}", where=where) from e

    if b"-----BEGIN" not in data or b"PRIVATE KEY-----" not in data:
        raise SigningError("not a PEM private key", where=where)
    encrypted = b"ENCRYPTED" in data
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError as e:
        if passphrase is None:
            raise SigningError("key is encrypted; a passphrase is required", where=where) from e
        raise SigningError("key is not encrypted but a passphrase was given", where=where) from e
    except ValueError as e:
        if encrypted and passphrase is not None:
            raise SigningError("wrong passphrase (or corrupted key)", where=where) from e
        raise SigningError("not a valid PEM private key", where=where) from e
    except UnsupportedAlgorithm as e:
        raise SigningError("unsupported private key algorithm", where=where) from e

    if not isinstance(key, rsa.RSAPrivateKey):
        raise SigningError(
            f"expected an RSA private key, found {type(key).__name__.lstrip('_')}", where=where
        )
    if key.key_size != KEY_SIZE_BITS:
        raise SigningError(
            f"expected a {KEY_SIZE_BITS}-bit RSA key, got {key.key_size} bits", where=where
        )
    exponent = key.public_key().public_numbers().e
    if exponent != PUBLIC_EXPONENT:
        raise SigningError(
            f"expected RSA public exponent {PUBLIC_EXPONENT}, got {exponent}", where=where
        )
    return key
