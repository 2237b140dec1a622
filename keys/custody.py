"""Choosing where the CA's keys live (SPEC R-KEY-1): encrypted files, or a PKCS#11 token.

`open_keystore` is the one place that picks the backend; the hierarchy and the CA see only a
`KeyStore` (create, load, replace, exists), whose signers are `ForwardingEcSigner`s.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from keys.errors import KeyCustodyError
from keys.file_signer import FileKeyStore, ensure_owner_only, load_passphrase
from keys.signer import ForwardingEcSigner

OCSP_SUFFIX = "-ocsp"


class KeyStore(Protocol):
    """What the hierarchy needs from a key store."""

    def exists(self, label: str) -> bool:
        """Whether a key with that label exists."""
        ...

    def create(self, label: str, algorithm: str) -> ForwardingEcSigner:
        """Create a new key; refuses to overwrite."""
        ...

    def load(self, label: str) -> ForwardingEcSigner:
        """Open an existing key."""
        ...

    def replace(self, label: str, algorithm: str) -> ForwardingEcSigner:
        """Create a fresh key under an existing label, keeping the previous one as `.old`."""
        ...

    def key_file(self, label: str) -> bytes | None:
        """The encrypted key file of `label`, or None when the key lives in a token."""
        ...

    def install_key_file(self, label: str, pem: bytes) -> bool:
        """Install another node's encrypted key file for `label`; False when identical."""
        ...


@dataclass(frozen=True)
class Pkcs11Settings:
    """The `[keys]` settings of the pkcs11 backend."""

    module: str
    token_label: str
    pin_file: Path
    pin_env: str
    sessions: int = 1
    label_prefix: str = "sekisho-"
    ocsp_keys_in_token: bool = True


def load_pin(pin_file: Path, pin_env: str) -> str:
    """The token's user PIN from the environment variable, else from the 0600 file.

    The PIN is never in config.toml and never logged (R-KEY-1).
    """
    from_env = os.environ.get(pin_env)
    if from_env:
        return from_env
    if not pin_file.exists():
        raise KeyCustodyError(
            f"no token PIN: set {pin_env} or create {pin_file} (mode 0600)")
    ensure_owner_only(pin_file)
    pin = pin_file.read_text().strip()
    if not pin:
        raise KeyCustodyError(f"the PIN file {pin_file} is empty")
    return pin


class SplitKeyStore:
    """CA keys in the token, OCSP responder keys (labels `gN-ocsp`) in encrypted files: for
    banks that keep the 60-to-90-day responder keys in software."""

    def __init__(self, token_store: KeyStore, responder_store: Callable[[], KeyStore]) -> None:
        self.token_store = token_store
        self._responder_store = responder_store

    def _for(self, label: str) -> KeyStore:
        return self._responder_store() if label.endswith(OCSP_SUFFIX) else self.token_store

    def exists(self, label: str) -> bool:
        """Whether the key exists where its kind lives."""
        return self._for(label).exists(label)

    def create(self, label: str, algorithm: str) -> ForwardingEcSigner:
        """Create the key where its kind lives."""
        return self._for(label).create(label, algorithm)

    def load(self, label: str) -> ForwardingEcSigner:
        """Open the key where its kind lives."""
        return self._for(label).load(label)

    def replace(self, label: str, algorithm: str) -> ForwardingEcSigner:
        """Re-key where the kind lives."""
        return self._for(label).replace(label, algorithm)

    def key_file(self, label: str) -> bytes | None:
        """The key file of a responder key; None for a key in the token."""
        return self._for(label).key_file(label)

    def install_key_file(self, label: str, pem: bytes) -> bool:
        """Install a responder's key file (the token's keys have no file)."""
        return self._for(label).install_key_file(label, pem)


def open_keystore(backend: str, directory: Path, passphrase_file: Path, passphrase_env: str,
                  pkcs11_settings: Pkcs11Settings | None) -> KeyStore:
    """The configured key store; fails with one actionable line (module, token, PIN)."""
    def file_store() -> FileKeyStore:
        return FileKeyStore(directory, load_passphrase(passphrase_file, passphrase_env))

    if backend == "file":
        return file_store()
    if backend != "pkcs11" or pkcs11_settings is None:
        raise KeyCustodyError(f"unknown key backend {backend!r}; use file or pkcs11")
    from keys.pkcs11_signer import Pkcs11KeyStore, Pkcs11Token

    settings = pkcs11_settings
    pin = load_pin(settings.pin_file, settings.pin_env)
    token = Pkcs11Token(settings.module, settings.token_label, pin, sessions=settings.sessions)
    store = Pkcs11KeyStore(token, label_prefix=settings.label_prefix)
    if settings.ocsp_keys_in_token:
        return store
    opened: list[FileKeyStore] = []

    def responder_store() -> FileKeyStore:
        # The passphrase is read when a responder key is first needed, not before.
        if not opened:
            opened.append(file_store())
        return opened[0]

    return SplitKeyStore(store, responder_store)


def import_file_key(path: Path, passphrase: bytes, token_store: object, label: str) -> None:
    """Copy the encrypted file key at `path` into the token as a non-extractable key, then
    prove the token's copy signs for the same public key (the `keys import` migration)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from keys.errors import KeyNotFound, WrongPassphrase
    from keys.pkcs11_signer import Pkcs11KeyStore, signature_round_trip

    if not isinstance(token_store, Pkcs11KeyStore):
        raise KeyCustodyError('keys import needs keys.backend = "pkcs11"')
    if not path.exists():
        raise KeyNotFound(f"no key file {path}")
    ensure_owner_only(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), passphrase)
    except (ValueError, TypeError):
        raise WrongPassphrase(f"the key passphrase does not open {path}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyCustodyError(f"{path} is not an EC key")
    token_store.import_key(label, key)
    del key
    signer = token_store.load(label)
    signature_round_trip(signer)


def token_store_of(store: object) -> object | None:
    """The PKCS#11 part of a key store (None for the file backend)."""
    from keys.pkcs11_signer import Pkcs11KeyStore

    if isinstance(store, SplitKeyStore):
        store = store.token_store
    return store if isinstance(store, Pkcs11KeyStore) else None


def close_keystore(store: object) -> None:
    """Log out of the token (a no-op for files)."""
    from keys.pkcs11_signer import Pkcs11KeyStore

    token_store = token_store_of(store)
    if isinstance(token_store, Pkcs11KeyStore):
        token_store.token.close()
