"""Ed25519 signing keys for bundle archives (PEM files; the private key is written 0600)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgemm._deps import require
from edgemm.errors import InputPathError, SignatureError, UsageError
from edgemm.fsio import check_output_file, read_bounded
from edgemm.staging import staged_file

MAX_KEY_BYTES = 64 * 1024


def _serialization() -> Any:
    require("cryptography", extra="serve", purpose="signing bundle archives")
    from cryptography.hazmat.primitives import serialization

    return serialization


def generate_keypair(private_path: Path, public_path: Path, *, force: bool = False) -> str:
    """Write a new Ed25519 key pair; returns the public key's fingerprint.

    Each file is staged and published by rename (the private key is 0600 before a byte of it is
    written); if either cannot be written, neither new file is left behind.

    Raises:
        UsageError: A file exists and ``force`` is not set.
        InputPathError: A path is a directory or special file, or lies under a file.
        DiskFullError / PathPermissionError / …: The filesystem refused.
    """
    serialization = _serialization()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    for path in (private_path, public_path):
        check_output_file(path, "Key file")
        if path.exists() and not force:
            raise UsageError(f"{path} exists; refusing to overwrite a key.", hint="Choose another path or pass --force.")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    public_existed = public_path.exists()
    try:
        with staged_file(private_path, mode=0o600, replace=True, what="Private key") as private_fh:
            private_fh.write(private_pem)
            # Published inside the private key's block, so a failure anywhere publishes neither.
            with staged_file(public_path, replace=True, what="Public key") as public_fh:
                public_fh.write(public_pem)
    except BaseException:
        if not public_existed:  # the private key's own publication failed after the public one's
            public_path.unlink(missing_ok=True)
        raise
    return fingerprint(public_pem)


def fingerprint(public_pem: bytes) -> str:
    """A short, stable id of a public key: ``ed25519:<first 16 hex of sha256(raw key)>``."""
    import hashlib

    return "ed25519:" + hashlib.sha256(_raw_public(load_public_key_bytes(public_pem))).hexdigest()[:16]


def _raw_public(key: Any) -> bytes:
    serialization = _serialization()
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _read(path: Path, what: str) -> bytes:
    try:
        return read_bounded(path, MAX_KEY_BYTES, what, hint="A PEM key is a few hundred bytes: check the path.")
    except InputPathError as exc:
        if exc.details.get("errno") == "ENOENT":
            exc.hint = "Create one with: edgemm keygen --out DIR"
        raise


def load_private_key(path: Path) -> Any:
    """Load a PEM Ed25519 private key."""
    serialization = _serialization()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(_read(path, "Private key"), password=None)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{path} is not an unencrypted PEM private key ({exc}).") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"{path} is not an Ed25519 key.", hint="Create one with: edgemm keygen --out DIR")
    return key


def load_public_key_bytes(data: bytes) -> Any:
    """Parse a PEM Ed25519 public key.

    Raises:
        UsageError: The bytes are not a PEM Ed25519 public key (exit 2).
    """
    serialization = _serialization()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"Not a PEM public key ({exc}).") from None
    if not isinstance(key, Ed25519PublicKey):
        raise UsageError("The trusted key is not an Ed25519 public key.")
    return key


def load_public_key(path: Path) -> Any:
    """Load the device's trusted PEM Ed25519 public key."""
    return load_public_key_bytes(_read(path, "Public key"))


def sign(private_key: Any, message: bytes) -> bytes:
    """The 64-byte Ed25519 signature of ``message``."""
    return private_key.sign(message)


def verify_signature(public_key: Any, signature: bytes, message: bytes) -> None:
    """Raise :class:`SignatureError` unless ``signature`` signs ``message`` under ``public_key``."""
    from cryptography.exceptions import InvalidSignature

    try:
        public_key.verify(signature, message)
    except InvalidSignature:
        raise SignatureError("The archive's signature does not verify against the trusted key.",
                             hint="Only install archives packed with the fleet's signing key.") from None
