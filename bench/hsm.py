"""Key custody in a PKCS#11 token vs encrypted files (R-KEY-1): what signing through the token
costs, in one run, with the ratio.

1. Raw signatures/s, P-256, one thread, through the CA's signer seam (`ForwardingEcSigner`):
   the file key (cryptography, in memory) vs the token key (SoftHSM2 via python-pkcs11: digest
   here, CKM_ECDSA in the token, r||s -> DER). Also the token with 2 threads (calls are
   serialised: python-pkcs11 initialises the module without CKF_OS_LOCKING_OK).
2. Nonce OCSP requests/s against the real daemon (`sekisho-ca serve` pinned to core 0, `ab -k`
   on core 1, c=16): each nonce request is signed fresh, so this is the responder key's cost.
3. CRL re-sign of 100k revoked entries (`CrlPublisher.publish('g1')`, build + sign in a worker
   thread) with each backend.

SoftHSM2 is software: its "token" is a library in our own process doing OpenSSL's ECDSA, so
the token column is the PKCS#11 path's overhead, not an HSM's. A network HSM adds a round trip
per signature (typically 0.5-5 ms on a LAN, plus the HSM's own signing time; ~1 ms at 1,000
signatures/s/partition is common): see the estimate printed at the end.

    python bench/hsm.py [--quick] [--signatures 5000] [--requests 5000] [--crl-entries 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._support import (
    Daemon,
    insert_rows,
    make_ca,
    median,
    pin_self,
    run_ab,
)
from bench.crl import create_store, ours, revoked_rows
from bench.ocsp import request_der
from ca.config import CaConfig, load_ca_config
from ca.runtime import open_hierarchy
from common.logging import configure_logging
from keys.custody import close_keystore
from keys.signer import ForwardingEcSigner
from tests.support.softhsm import create_softhsm

DATA = b"x" * 200  # about a small TBSCertificate's digest input; hashing is not the point


def signatures_per_second(signer: ForwardingEcSigner, count: int, threads: int = 1) -> float:
    """Signatures/s through the seam, `count` in all, split over `threads`."""
    algorithm = ec.ECDSA(hashes.SHA256())
    share = count // threads

    def work() -> None:
        for _ in range(share):
            signer.sign(DATA, algorithm)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    signer.sign(DATA, algorithm)  # warm-up: the first call opens a session and finds the key
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    signature = signer.sign(DATA, algorithm)
    signer.public_key().verify(signature, DATA, algorithm)  # it really signed
    return share * threads / elapsed


def issue_one(config_path: Path, workdir: Path) -> Path:
    """A client certificate from the CA (via `sekisho-ca issue`), for the OCSP requests."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME,
                                                       "900001")]))
           .sign(key, hashes.SHA256()))
    csr_path, out = workdir / "leaf.csr", workdir / "leaf.pem"
    csr_path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    subprocess.run([sys.executable, "-m", "ca", "--config", str(config_path), "issue", "900001",
                    "--csr", str(csr_path), "--output", str(out)],
                   check=True, capture_output=True, timeout=120)
    return out


def nonce_request(config_path: Path, config: CaConfig, workdir: Path) -> Path:
    """A file holding a nonce OCSP request for a certificate the CA just issued."""
    leaf = x509.load_pem_x509_certificate(issue_one(config_path, workdir).read_bytes())
    issuer = x509.load_pem_x509_certificate(
        (config.keys.directory / "g1.crt.pem").read_bytes())
    body = workdir / "nonce.der"
    body.write_bytes(request_der(leaf, issuer, nonce=True))
    return body


def nonce_ocsp(config_path: Path, config: CaConfig, workdir: Path, body: Path, requests: int,
               rounds: int) -> float:
    """Median requests/s of nonce OCSP requests (c=16, keep-alive) against a fresh daemon."""
    base = f"http://127.0.0.1:{config.public_listen.port}"
    daemon = Daemon(config_path, cpus="0", stderr=workdir / "daemon.log")
    try:
        daemon.wait_ready(f"{base}/health")
        run_ab(f"{base}/ocsp", requests=200, concurrency=4, keepalive=True, body_file=body,
               content_type="application/ocsp-request")  # warm-up
        figures = []
        for _ in range(rounds):
            result = run_ab(f"{base}/ocsp", requests=requests, concurrency=16, keepalive=True,
                            body_file=body, content_type="application/ocsp-request",
                            time_limit=120)
            if result.non2xx:
                raise RuntimeError(f"{result.non2xx} non-2xx OCSP answers")
            figures.append(result.rps)
        return median(figures)
    finally:
        daemon.stop()


def crl_resign(config: CaConfig, workdir: Path, rows: list[tuple[object, ...]], name: str,
               repeat: int) -> float:
    """Median seconds of publish('g1') over `rows` revoked entries (the first run of a fresh
    store: the entry encodings are not cached yet, as after a daemon restart)."""
    database = workdir / f"crl-{name}.sqlite3"
    asyncio.run(create_store(database))
    insert_rows(database, rows)
    try:
        return asyncio.run(ours(config, database, repeat))["total"]
    finally:
        database.unlink()


def main() -> None:
    """Run all three measurements with both backends and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller counts, one round")
    parser.add_argument("--signatures", type=int, default=5000)
    parser.add_argument("--requests", type=int, default=5000, help="per ab run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--crl-entries", type=int, default=100_000)
    args = parser.parse_args()
    if args.quick:
        args.signatures, args.requests, args.rounds = 2000, 2000, 1
    configure_logging("warning", process="bench-hsm")
    print(f"load average before the run: {os.getloadavg()[0]:.2f} (other work skews the figures)")
    workdir = Path(tempfile.mkdtemp(prefix="sekisho-bench-hsm-"))
    softhsm = create_softhsm(workdir / "softhsm")  # sets SOFTHSM2_CONF for the daemons too
    configs: dict[str, Path] = {
        "file": make_ca(kdf_rounds=2048),
        "token": make_ca(kdf_rounds=2048, keys=softhsm.keys_config(workdir, "bench-")),
    }
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in configs}

    def record(name: str, key: str, value: float) -> None:
        samples[name].setdefault(key, []).append(value)

    try:
        # Rounds alternate the backends (file, token, token, file, ...) so that load from
        # elsewhere on the machine falls on both alike.
        orders = [list(configs) if n % 2 == 0 else list(reversed(configs))
                  for n in range(args.rounds)]
        pin_self(1)
        signers = {}
        for name, path in configs.items():
            hierarchy = open_hierarchy(load_ca_config(path))
            signers[name] = (hierarchy, hierarchy.load_generation("g1").signer)
        for order in orders:
            for name in order:
                signer = signers[name][1]
                record(name, "sign", signatures_per_second(signer, args.signatures))
                record(name, "sign2", signatures_per_second(signer, args.signatures, 2))
        for hierarchy, _ in signers.values():
            close_keystore(hierarchy.keystore)
        bodies = {}
        for name, path in configs.items():
            folder = workdir / f"ocsp-{name}"
            folder.mkdir()
            bodies[name] = (folder, nonce_request(path, load_ca_config(path), folder))
        for order in orders:
            for name in order:
                folder, body = bodies[name]
                record(name, "ocsp", nonce_ocsp(configs[name], load_ca_config(configs[name]),
                                                folder, body, args.requests, 1))
        rows = revoked_rows(args.crl_entries, random.Random(20260101))
        pin_self(0)
        for name in configs:  # warm-up, not recorded: first-use costs of the CRL path
            crl_resign(load_ca_config(configs[name]), workdir, rows[:1000], name, 1)
        # One signature per CRL: the time is building 100k entries, which varies by tens of
        # percent from run to run here; more alternating runs than for the rest.
        for order in orders + orders:
            for name in order:
                record(name, "crl", crl_resign(load_ca_config(configs[name]), workdir, rows,
                                               name, 1))
    finally:
        for path in configs.values():
            shutil.rmtree(path.parent, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
    results = {name: {key: median(values) for key, values in figures.items()}
               for name, figures in samples.items()}

    file, token = results["file"], results["token"]
    print()
    print("Key custody: file key (cryptography) vs SoftHSM2 token (python-pkcs11), P-256 g1 and "
          f"responder keys; medians of {args.rounds} round(s) ({2 * args.rounds} for the CRL)")
    header = f"{'measure':<44} | {'file':>10} | {'token':>10} | {'token/file':>10}"
    print(header)
    print("-" * len(header))
    for label, key in (
        ("signatures/s, 1 thread", "sign"),
        ("signatures/s, 2 threads", "sign2"),
        ("nonce OCSP requests/s (c=16, keep-alive)", "ocsp"),
        (f"CRL re-sign, {args.crl_entries:,} entries (s)", "crl"),
    ):
        print(f"{label:<44} | {file[key]:10,.2f} | {token[key]:10,.2f} | "
              f"{token[key] / file[key]:10.2f}")
    per_signature_ms = 1000 / token["sign"]
    print()
    print(f"SoftHSM2 is software in our own process: {per_signature_ms:.3f} ms per signature "
          "through PKCS#11 here. A network HSM adds a round trip per signature; at 1 ms per "
          "signature (LAN round trip + HSM signing) one serialised session gives ~1,000 "
          "signatures/s, i.e. ~1,000 nonce OCSP answers/s at most, unless the module is "
          "thread-safe and keys.pkcs11_sessions > 1. Certificates and CRLs need one "
          "signature each, so they barely notice; pre-signed (nonce-less) OCSP answers need "
          "none per request.")


if __name__ == "__main__":
    main()
