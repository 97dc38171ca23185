"""Seal keys: an Ed25519 key pair kept outside the database (`trialflow audit keygen`).

A seal is signed with the private key (RFC 8032 Ed25519, through the `cryptography` library)
and checked with the public key, which an auditor keeps apart from the database: whoever can
rewrite the database cannot make a seal that verifies without the private key, and a seal or
a root kept elsewhere shows a rewrite of what it covered.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from events.errors import IntegrityFailure


class KeyProblem(ValueError):
    """A key file that cannot be read or is not an Ed25519 key (a usage error, exit 2)."""


@dataclass(frozen=True)
class SealKey:
    private: Ed25519PrivateKey

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    def sign(self, data: bytes) -> str:
        return base64.b64encode(self.private.sign(data)).decode("ascii")


def key_id(public: Ed25519PublicKey) -> str:
    """A public key's fingerprint: SHA-256 of its 32 raw bytes, in hex."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def generate(private_path: Path) -> tuple[Path, str]:
    """Write a new private key (PEM, mode 0600, never over an existing file or through a
    link) and its public key beside it (`PATH.pub`); return the public key's path and id."""
    key = Ed25519PrivateKey.generate()
    if not private_path.name or private_path.name in (".", ".."):
        raise KeyProblem(f"{str(private_path)!r} is not a file name for the key.")
    public_path = private_path.with_name(private_path.name + ".pub")
    for path in (private_path, public_path):
        if os.path.lexists(path):
            raise KeyProblem(f"{path} exists; a seal key is never overwritten.")
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    _write_new(private_path, private, 0o600)
    try:
        _write_new(public_path, public_pem(key.public_key()), 0o644)
    except BaseException:
        private_path.unlink(missing_ok=True)
        raise
    return public_path, key_id(key.public_key())


def _write_new(path: Path, data: bytes, mode: int) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        descriptor = os.open(path, flags, mode)
    except OSError as error:
        raise KeyProblem(f"Cannot create {path}: {error.strerror}.") from error
    except ValueError as error:  # a NUL byte, an unencodable name
        raise KeyProblem(f"Cannot create {str(path)!r}: {error}.") from error
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def load_private(path: Path) -> SealKey:
    data = _read(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as error:
        raise KeyProblem(f"{path} is not an unencrypted PEM private key: {error}.") from error
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyProblem(f"{path} is not an Ed25519 key (`trialflow audit keygen` makes one).")
    return SealKey(key)


def load_public(path: Path) -> Ed25519PublicKey:
    """A public key file, or the public half of a private key file."""
    data = _read(path)
    if b"PRIVATE KEY" in data:
        return load_private(path).public
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as error:
        raise KeyProblem(f"{path} is not a PEM public key: {error}.") from error
    if not isinstance(key, Ed25519PublicKey):
        raise KeyProblem(f"{path} is not an Ed25519 public key.")
    return key


MAX_KEY_BYTES = 64 * 1024  # a PEM key is a few hundred bytes


def _read(path: Path) -> bytes:
    try:
        found = path.stat()
        if not stat.S_ISREG(found.st_mode) or found.st_size > MAX_KEY_BYTES:
            raise KeyProblem(f"{path} is not a key file (a regular file of at most "
                             f"{MAX_KEY_BYTES // 1024} KiB).")
        return path.read_bytes()
    except OSError as error:
        raise KeyProblem(f"Cannot read the key file {path}: {error.strerror}.") from error
    except ValueError as error:  # a NUL byte, an unencodable name
        raise KeyProblem(f"Cannot read the key file {str(path)!r}: {error}.") from error


def check_signature(public: Ed25519PublicKey, signature: str, data: bytes,
                    source: str) -> None:
    try:
        public.verify(base64.b64decode(signature, validate=True), data)
    except (InvalidSignature, ValueError) as error:
        raise IntegrityFailure(
            f"Seal file {source} does not carry a valid signature of the seal key "
            f"{key_id(public)[:16]}: it was altered or made with another key.") from error
