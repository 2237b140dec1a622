"""Server-side key pairs and their PKCS#12 delivery (R-CERT-4).

These functions run in a worker process (see `KeyWorkers`): PBKDF2 at 600,000 rounds holds the
GIL for ~170 ms, which would stall the event loop if run in a thread. The private key travels
to the worker as DER over the pool's pipe, in memory only; it is never stored or logged, and
afterwards exists only inside the encrypted PKCS#12.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import hashlib
import hmac
import itertools
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

from asn1crypto import pkcs12 as asn1_pkcs12
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12


def generate_private_key_der(algorithm: str) -> bytes:
    """A fresh P-256 or RSA-2048 private key as unencrypted PKCS#8 DER (worker-side)."""
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if algorithm == "p256":
        key = ec.generate_private_key(ec.SECP256R1())
    elif algorithm == "rsa2048":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        raise ValueError(f"unknown key algorithm {algorithm!r}")
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_of(private_key_der: bytes) -> CertificatePublicKeyTypes:
    """The public key of a PKCS#8 DER private key."""
    public_key = serialization.load_der_private_key(private_key_der, None).public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise TypeError("unexpected key type")
    return public_key


def build_pkcs12(
    private_key_der: bytes, certificate_der: bytes, chain_der: list[bytes], password: str,
    kdf_rounds: int, friendly_name: str,
) -> bytes:
    """AES-256-CBC + PBKDF2-SHA256 key and certificate bags with a SHA-256 MAC (R-CERT-4), the
    MAC iterated as many times as the key bag's PBKDF2.

    The chain (issuing CA, then root) is included so that Windows, macOS and Firefox can build
    the path on import.
    """
    key = serialization.load_der_private_key(private_key_der, None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise TypeError("unexpected key type")
    encryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(kdf_rounds)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(password.encode())
    )
    pfx = pkcs12.serialize_key_and_certificates(
        friendly_name.encode(),
        key,
        x509.load_der_x509_certificate(certificate_der),
        [x509.load_der_x509_certificate(der) for der in chain_der],
        encryption,
    )
    return with_mac_iterations(pfx, password, kdf_rounds)


# RFC 7292 Appendix B.2 with SHA-256: u = 32-byte output, v = 64-byte block.
_MAC_KEY_ID = 3
_BLOCK = 64
MAC_SALT_BYTES = 16


_NativeKdf = Callable[[bytes, bytes, int], bytes]


@functools.cache
def _native_mac_kdf() -> _NativeKdf | None:
    """OpenSSL's own PKCS#12 KDF (`PKCS12_key_gen_uni`) from the system libcrypto, or None.

    The same function OpenSSL verifies the MAC with, in C: the pure-Python loop below costs
    ~0.7 us per iteration in interpreter overhead, about 4x the hashing itself. Used only when
    the library is there; both give the same key (tests/ca/test_pkcs12_mac.py).
    """
    name = ctypes.util.find_library("crypto")
    if name is None:
        return None
    try:
        library = ctypes.CDLL(name)
        generate, sha256 = library.PKCS12_key_gen_uni, library.EVP_sha256
    except (OSError, AttributeError):
        return None
    sha256.restype, sha256.argtypes = ctypes.c_void_p, []
    generate.restype = ctypes.c_int
    generate.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                         ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_char_p,
                         ctypes.c_void_p]

    def derive(secret: bytes, salt: bytes, iterations: int) -> bytes:
        out = ctypes.create_string_buffer(hashlib.sha256().digest_size)
        if generate(secret, len(secret), salt, len(salt), _MAC_KEY_ID, iterations,
                    len(out.raw), out, sha256()) != 1:
            raise ValueError("PKCS12_key_gen_uni failed")
        return out.raw

    return derive


def pkcs12_mac_key(password: str, salt: bytes, iterations: int, *,
                   native: bool = True) -> bytes:
    """The HMAC-SHA256 key of a PKCS#12 MacData: RFC 7292 Appendix B.2's KDF, ID 3.

    The password is a BMPString with two zero bytes at the end (B.1). SHA-256's output is
    exactly one block, so the key is H^iterations(D || I). `native=False` forces the
    pure-Python form.
    """
    secret = password.encode("utf-16-be") + b"\0\0"

    def stretch(data: bytes) -> bytes:
        if not data:
            return b""
        length = _BLOCK * -(-len(data) // _BLOCK)
        return (data * (length // len(data) + 1))[:length]

    derive = _native_mac_kdf() if native else None
    if derive is not None:
        return derive(secret, salt, iterations)
    digest = hashlib.sha256(bytes([_MAC_KEY_ID]) * _BLOCK + stretch(salt) + stretch(secret))
    key = digest.digest()
    sha256 = hashlib.sha256
    for _ in itertools.repeat(None, iterations - 1):
        key = sha256(key).digest()
    return key


def with_mac_iterations(pfx_der: bytes, password: str, iterations: int) -> bytes:
    """`pfx_der` with its MacData recomputed at `iterations` (issue 10 item 6).

    The MAC is what rejects a wrong password when a file is opened, so a thief tests guesses
    against it: at cryptography's fixed 2,048 iterations each guess cost ~300x less than the
    key bag's PBKDF2. The authSafe is kept byte for byte; only MacData changes (SHA-256, a
    fresh salt, the PKCS#12 KDF of RFC 7292 that OpenSSL 3, NSS, Windows and macOS verify).
    """
    pfx = asn1_pkcs12.Pfx.load(pfx_der)
    auth_safe = pfx["auth_safe"]
    salt = os.urandom(MAC_SALT_BYTES)
    mac = hmac.new(pkcs12_mac_key(password, salt, iterations),
                   auth_safe["content"].contents, hashlib.sha256).digest()
    mac_data = asn1_pkcs12.MacData({
        "mac": {"digest_algorithm": {"algorithm": "sha256"}, "digest": mac},
        "mac_salt": salt,
        "iterations": iterations,
    })
    return asn1_pkcs12.Pfx({"version": pfx["version"], "auth_safe": auth_safe,
                            "mac_data": mac_data}).dump()


def mac_iterations(pfx_der: bytes) -> int:
    """The MAC iteration count of a PKCS#12 file (for tests and the benchmark)."""
    return int(asn1_pkcs12.Pfx.load(pfx_der)["mac_data"]["iterations"].native)


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_PARENT_WATCH_INTERVAL = 1.0


def _die_with_parent(parent_pid: int) -> None:
    """End this worker when the daemon that spawned it dies, even by kill -9 (issue 11 item 6).

    On Linux the kernel sends SIGKILL the moment the parent goes (prctl PR_SET_PDEATHSIG);
    elsewhere a thread polls the parent's PID. Either way, if the parent is already gone by the
    time this runs, the worker leaves at once. With the workers gone, the multiprocessing
    resource tracker (which the daemon and its workers hold a pipe to) reads end-of-file and
    exits by itself.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    else:
        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(_PARENT_WATCH_INTERVAL)
            os._exit(1)

        threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    if os.getppid() != parent_pid:
        os._exit(1)  # the daemon died before the death signal was armed


def _worker_init(parent_pid: int) -> None:
    """Workers leave signals to the daemon (it stops them through the pool) and die with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent(parent_pid)


class KeyWorkers:
    """A process pool for key generation and PKCS#12 encryption, off the event loop.

    Workers are spawned, not forked: a forked child would carry a copy of the daemon's memory
    (opened CA keys among it) and its signal wake-up descriptor.
    """

    def __init__(self, workers: int = 2) -> None:
        self._pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
            # The death signal follows the thread that spawned the worker: the pool spawns
            # from submit(), i.e. the event loop's thread, which lives as long as the daemon.
            initializer=_worker_init, initargs=(os.getpid(),),
        )

    async def generate_key(self, algorithm: str) -> bytes:
        """A new private key (PKCS#8 DER). P-256 takes microseconds; RSA-2048 ~60 ms."""
        if algorithm == "p256":
            return generate_private_key_der(algorithm)
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, generate_private_key_der, algorithm
        )

    async def pkcs12(
        self, private_key_der: bytes, certificate_der: bytes, chain_der: list[bytes],
        password: str, kdf_rounds: int, friendly_name: str,
    ) -> bytes:
        """Encrypt key + certificate + chain into a PKCS#12 in a worker process."""
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, build_pkcs12, private_key_der, certificate_der, chain_der, password,
            kdf_rounds, friendly_name,
        )

    def close(self) -> None:
        """Stop the worker processes."""
        self._pool.shutdown(wait=True, cancel_futures=True)
