"""Keys kept as passphrase-encrypted PKCS#8 PEM files, mode 0600 (R-OPS-3)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from keys.errors import InsecureKeyFile, KeyCustodyError, KeyExists, KeyNotFound, WrongPassphrase
from keys.signer import ForwardingEcSigner

CURVES: dict[str, ec.EllipticCurve] = {"p256": ec.SECP256R1(), "p384": ec.SECP384R1()}


def load_passphrase(passphrase_file: Path, env_var: str) -> bytes:
    """Read the key passphrase from the environment variable, else from the 0600 file."""
    from_env = os.environ.get(env_var)
    if from_env:
        return from_env.encode()
    if not passphrase_file.exists():
        raise KeyCustodyError(
            f"no key passphrase: set {env_var} or create {passphrase_file} (mode 0600)"
        )
    ensure_owner_only(passphrase_file)
    value = passphrase_file.read_bytes().strip()
    if len(value) < 16:
        raise KeyCustodyError(f"the passphrase in {passphrase_file} is shorter than 16 bytes")
    return value


def ensure_owner_only(path: Path) -> None:
    """Refuse a secret file that the group or others can read or write."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InsecureKeyFile(
            f"{path} has mode {stat.S_IMODE(mode):04o}; run: chmod 600 {path}"
        )


def write_owner_only(path: Path, data: bytes) -> None:
    """Create `path` with mode 0600 from the start (never briefly readable); no overwrite."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyExists(f"{path} already exists; refusing to overwrite it") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


class FileKeyStore:
    """A folder of encrypted signing keys, addressed by label (e.g. "root", "g1", "g1-ocsp")."""

    def __init__(self, directory: Path, passphrase: bytes) -> None:
        self._directory = directory
        self._passphrase = passphrase

    def key_path(self, label: str) -> Path:
        """Where the key called `label` lives."""
        return self._directory / f"{label}.key.pem"

    def exists(self, label: str) -> bool:
        """Whether a key with that label has been created."""
        return self.key_path(label).exists()

    def create(self, label: str, algorithm: str) -> ForwardingEcSigner:
        """Generate a new key, store it encrypted with mode 0600 and return its signer."""
        curve = CURVES.get(algorithm)
        if curve is None:
            raise KeyCustodyError(f"unknown CA key algorithm {algorithm!r}; use p256 or p384")
        key = ec.generate_private_key(curve)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(self._passphrase),
        )
        write_owner_only(self.key_path(label), pem)
        return ForwardingEcSigner(key, label)

    def replace(self, label: str, algorithm: str) -> ForwardingEcSigner:
        """Create a fresh key under `label`, keeping the old file as `label.key.pem.old`.

        Used for short-lived OCSP responder keys, which are rotated with each certificate.
        """
        path = self.key_path(label)
        if path.exists():
            path.replace(path.with_suffix(".pem.old"))
        return self.create(label, algorithm)

    def key_file(self, label: str) -> bytes | None:
        """The encrypted key file of `label` (what another node installs with
        `install_key_file`: the passphrase is the same on every node of a cluster)."""
        return self.key_path(label).read_bytes()

    def install_key_file(self, label: str, pem: bytes) -> bool:
        """Install the encrypted key file another node created for `label` (a renewed OCSP
        responder, issue 13): checked to open with this node's passphrase first, written
        0600 then renamed over the old one (kept as `.old`); False when already identical."""
        path = self.key_path(label)
        if path.exists() and path.read_bytes() == pem:
            return False
        try:
            serialization.load_pem_private_key(pem, self._passphrase)
        except (ValueError, TypeError):
            raise WrongPassphrase(f"the published key {label!r} does not open with this "
                                  "node's key passphrase (every node needs the same)") from None
        fresh = path.with_suffix(".pem.new")
        fresh.unlink(missing_ok=True)  # a crash's leftover
        write_owner_only(fresh, pem)
        if path.exists():
            path.replace(path.with_suffix(".pem.old"))
        fresh.replace(path)
        return True

    def load(self, label: str) -> ForwardingEcSigner:
        """Open an existing key after checking its file mode."""
        path = self.key_path(label)
        if not path.exists():
            raise KeyNotFound(f"key {label!r} not found at {path}; run `sekisho-ca init` first")
        ensure_owner_only(path)
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), self._passphrase)
        except (ValueError, TypeError):
            raise WrongPassphrase(f"the key passphrase does not open {path}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise KeyCustodyError(f"{path} is not an EC key")
        return ForwardingEcSigner(key, label)
