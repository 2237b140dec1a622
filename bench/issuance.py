"""Issuance throughput: the in-process floor vs end-to-end through the daemon's internal API,
then a re-acquisition-day burst (issue: CA core).

(a) floor: per certificate, on one core, the same cryptographic work the daemon does —
    argon2id check of the acquisition password, P-256 key generation, certificate signing,
    PKCS#12 encryption with the configured PBKDF2 rounds and a MAC iterated as often.
First the PKCS#12 alone per file: as delivered vs cryptography's own file (MAC at 2,048).
(b) end-to-end: `sekisho-ca serve` as a subprocess pinned to core 0 (its worker processes
    inherit the pin), the load client pinned to core 1, acquisitions at concurrency 1 and 16.
Then N users acquire at once; total time, p50, p99.

    python bench/issuance.py [--rounds 600000] [--count 40] [--burst 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import argon2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._support import Daemon, make_ca, pin_self, summary
from ca.config import load_ca_config
from ca.pkcs12 import build_pkcs12, mac_iterations

PASSWORD = "Acquire-Bench-2026"
HASHER = argon2.PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)


def _issue(index: int, issuer_key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
           now: datetime) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(index))]))
            .issuer_name(issuer).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + timedelta(days=365))
            .sign(issuer_key, hashes.SHA256()))
    key_der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_der, cert.public_bytes(serialization.Encoding.DER)


def floor(count: int, rounds: int) -> float:
    """Certificates per second doing the daemon's cryptographic work directly, one core."""
    issuer_key = ec.generate_private_key(ec.SECP256R1())
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench issuer")])
    stored = HASHER.hash(PASSWORD)
    now = datetime.now(UTC)
    started = time.perf_counter()
    for index in range(count):
        HASHER.verify(stored, PASSWORD)
        key_der, cert_der = _issue(index, issuer_key, issuer, now)
        build_pkcs12(key_der, cert_der, [], PASSWORD, rounds, "u")
    return count / (time.perf_counter() - started)


def pkcs12_cost(count: int, rounds: int) -> None:
    """Per-file PKCS#12 cost as delivered (MAC iterated like the bags) against the file
    cryptography builds alone (MAC fixed at 2,048 iterations, what was delivered before)."""
    issuer_key = ec.generate_private_key(ec.SECP256R1())
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench issuer")])
    now = datetime.now(UTC)
    material = [_issue(i, issuer_key, issuer, now) for i in range(count)]
    timings: dict[str, float] = {}
    files: dict[str, bytes] = {}
    for label, mac in (("cryptography alone", False), ("as delivered", True)):
        started = time.perf_counter()
        for key_der, cert_der in material:
            files[label] = build_pkcs12(key_der, cert_der, [], PASSWORD, rounds, "u") if mac \
                else _unmacced(key_der, cert_der, rounds)
        timings[label] = (time.perf_counter() - started) / count
    bags = rounds
    for label in timings:
        print(f"PKCS#12 {label}: key/cert bag PBKDF2 {bags} rounds, MAC "
              f"{mac_iterations(files[label])} iterations: {timings[label] * 1000:.0f} ms/file")
    ratio = timings["as delivered"] / timings["cryptography alone"]
    print(f"PKCS#12 per-file cost, delivered / cryptography alone = {ratio:.2f}")


def _unmacced(key_der: bytes, cert_der: bytes, rounds: int) -> bytes:
    key = serialization.load_der_private_key(key_der, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    encryption = (serialization.PrivateFormat.PKCS12.encryption_builder().kdf_rounds(rounds)
                  .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
                  .hmac_hash(hashes.SHA256()).build(PASSWORD.encode()))
    return pkcs12.serialize_key_and_certificates(
        b"u", key, x509.load_der_x509_certificate(cert_der), None, encryption)


def seed_users(database: Path, users: list[str]) -> None:
    """Give each user the same acquisition password hash (setup, not measured)."""
    stored = HASHER.hash(PASSWORD)
    now = int(time.time())
    with sqlite3.connect(database) as db:
        db.executemany(
            "INSERT INTO acquisition_secrets (user_id, password_hash, failed_attempts, locked,"
            " issued_at, updated_at) VALUES (?, ?, 0, 0, ?, ?)",
            [(user, stored, now, now) for user in users],
        )


async def acquire_all(url: str, token: str, users: list[str], concurrency: int
                      ) -> tuple[float, list[float]]:
    """Acquire a certificate for each user with `concurrency` requests in flight."""
    latencies: list[float] = []
    queue = list(reversed(users))
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     headers={"Authorization": f"Bearer {token}"}) as session:
        async def worker() -> None:
            while queue:
                user = queue.pop()
                started = time.perf_counter()
                async with session.post(f"{url}/v1/acquire", json={
                        "user_id": user, "acquisition_password": PASSWORD}) as response:
                    await response.read()
                    if response.status != 201:
                        raise RuntimeError(f"{user}: HTTP {response.status}")
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, latencies


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=600_000, help="PBKDF2 rounds")
    parser.add_argument("--count", type=int, default=40, help="certificates per measurement")
    parser.add_argument("--burst", type=int, default=2000, help="users in the burst")
    args = parser.parse_args()

    config_path = make_ca(kdf_rounds=args.rounds)
    config = load_ca_config(config_path)
    pin_self(1)
    pkcs12_cost(min(args.count, 10), args.rounds)
    floor_rate = floor(args.count, args.rounds)
    print(f"(a) in-process floor, one core: {floor_rate:.2f} certificates/s")

    users = [f"u{i:06d}" for i in range(2 * args.count + args.burst)]
    daemon = Daemon(config_path, cpus="0")
    try:
        daemon.wait_ready(f"http://127.0.0.1:{config.public_listen.port}/health")
        seed_users(config.database, users)
        token = config.api_token_file.read_text().strip()
        url = f"http://127.0.0.1:{config.internal_listen.port}"
        for concurrency, batch in ((1, users[: args.count]),
                                   (16, users[args.count : 2 * args.count])):
            elapsed, latencies = asyncio.run(acquire_all(url, token, batch, concurrency))
            rate = len(batch) / elapsed
            print(f"(b) end-to-end c={concurrency:<2}: {rate:.2f} certificates/s "
                  f"({summary(latencies)}); b/a = {rate / floor_rate:.2f}")
        burst = users[2 * args.count :]
        elapsed, latencies = asyncio.run(acquire_all(url, token, burst, len(burst)))
        print(f"burst: {len(burst)} users at once: total {elapsed:.1f} s, {summary(latencies)}")
    finally:
        daemon.stop()


if __name__ == "__main__":
    main()
