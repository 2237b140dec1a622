"""CRL build + sign time and size: ours vs `openssl ca -gencrl` (issue: revocation publication,
R-REV-1).

Ours runs the daemon's path, `CrlPublisher.publish('g1')`: read the revoked entries from the
store (SQLite, filled here with executemany), build and sign the CRL in a worker thread,
persist it. It is timed whole and in parts, together with the longest stall of the event loop
meanwhile (what OCSP and API requests would wait). OpenSSL's peer is `openssl ca -gencrl` on an
index.txt holding the same entries (same serials, dates and reasons), signed with the same
P-256 g1 key; both pinned to core 0, timed in the same run.

    python bench/crl.py [--quick] [--sizes 10000,100000,1000000]
                        [--openssl-sizes 10000,100000,1000000] [--repeat 3]
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
import textwrap
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._support import (
    SHARED_REASONS,
    decrypted_key_pem,
    index_line,
    insert_rows,
    make_ca,
    median,
    pin_self,
    pinned,
    write_secret,
)
from ca import crl_publisher
from ca.config import CaConfig, load_ca_config
from ca.crl_publisher import CrlPublisher, _build
from ca.issuers import Issuers
from ca.runtime import open_hierarchy
from ca.store import Store
from common.logging import configure_logging
from policy.clock import SystemClock

Row = tuple[object, ...]


def revoked_rows(count: int, rng: random.Random) -> list[Row]:
    """`count` revoked, unexpired g1 certificates (no DER: the CRL path never reads it)."""
    now = int(time.time())
    rows = []
    serials: set[int] = set()
    while len(serials) < count:
        serials.add(rng.getrandbits(159) | 1)
    for index, serial in enumerate(serials):
        issued = now - rng.randrange(86400, 300 * 86400)
        rows.append((format(serial, "x"), f"u{index:07d}", "g1", "csr", issued,
                     issued + 365 * 86400, None, None, rng.randrange(issued, now),
                     SHARED_REASONS[index % len(SHARED_REASONS)], index + 1, issued))
    return rows


async def create_store(path: Path) -> None:
    """An empty store with the CA's schema."""
    store = await Store.open(path)
    await store.close()


async def loop_stall(stop: asyncio.Event) -> float:
    """The longest the event loop was unable to run a 1 ms timer on time, in seconds."""
    worst = 0.0
    while not stop.is_set():
        before = time.perf_counter()
        await asyncio.sleep(0.001)
        worst = max(worst, time.perf_counter() - before - 0.001)
    return worst


async def ours(config: CaConfig, database: Path, repeat: int) -> dict[str, float]:
    """Time publish('g1') as the daemon runs it, and its parts; medians over `repeat`."""
    store = await Store.open(database)
    issuers = Issuers(open_hierarchy(config))
    publisher = CrlPublisher(config, SystemClock(), store, issuers)
    generation = issuers.get("g1")
    figures: dict[str, list[float]] = {}
    crl_publisher._ENCODERS.clear()  # the first run of each size starts cold
    first_total = None
    try:
        for _ in range(repeat):
            stop = asyncio.Event()
            monitor = asyncio.create_task(loop_stall(stop))
            await asyncio.sleep(0.01)
            started = time.perf_counter()
            published = await publisher.publish("g1")
            total = time.perf_counter() - started
            first_total = total if first_total is None else first_total
            stop.set()
            stall = await monitor
            # The parts, one after another (same calls as publish makes).
            started = time.perf_counter()
            rows = await store.revoked_entries("g1", expired_before=SystemClock().now())
            read = time.perf_counter() - started
            now = SystemClock().now().replace(microsecond=0)
            started = time.perf_counter()
            der = await asyncio.to_thread(_build, generation.certificate, generation.signer, rows,
                                          published.number + 1, now, now + config.crl_validity)
            build = time.perf_counter() - started
            for key, value in (("total", total), ("read", read), ("build", build),
                               ("stall", stall), ("entries", float(published.entries)),
                               ("size", float(len(published.der)))):
                figures.setdefault(key, []).append(value)
            if len(x509.load_der_x509_crl(der)) != published.entries:
                raise RuntimeError("CRL entry count mismatch")
    finally:
        await store.close()
    result = {key: median(values) for key, values in figures.items()}
    result["first"] = first_total or 0.0
    return result


def openssl_gencrl(workdir: Path, config: CaConfig, rows: list[Row], repeat: int
                   ) -> dict[str, float]:
    """Time `openssl ca -gencrl` over an index.txt with the same entries."""
    folder = workdir / f"openssl-{len(rows)}"
    folder.mkdir()
    keys = config.keys.directory
    key = write_secret(folder / "g1.key",
                       decrypted_key_pem(keys / "g1.key.pem", config.keys.passphrase_file))
    (folder / "index.txt").write_text("".join(
        index_line(int(serial, 16), not_after, revoked_at, reason, f"/CN={user}")
        for serial, user, _, _, _, not_after, _, _, revoked_at, reason, _, _ in rows
    ))
    (folder / "crlnumber").write_text("01\n")
    (folder / "openssl.cnf").write_text(textwrap.dedent(f"""
        [ca]
        default_ca = bench
        [bench]
        database = {folder}/index.txt
        crlnumber = {folder}/crlnumber
        certificate = {keys}/g1.crt.pem
        private_key = {key}
        default_md = sha256
        default_crl_days = 1
        crl_extensions = crl_ext
        [crl_ext]
        authorityKeyIdentifier = keyid:always
    """))
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(pinned(["openssl", "ca", "-config", str(folder / "openssl.cnf"),
                               "-gencrl", "-batch", "-out", str(folder / "crl.pem")], "0"),
                       check=True, capture_output=True, timeout=600)
        times.append(time.perf_counter() - started)
    crl = x509.load_pem_x509_crl((folder / "crl.pem").read_bytes())
    shutil.rmtree(folder)
    return {"total": median(times), "entries": float(len(crl)),
            "size": float(len(crl.public_bytes(Encoding.DER)))}


def main() -> None:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10k and 100k only, one run each")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--openssl-sizes", default="10000,100000,1000000")
    parser.add_argument("--repeat", type=int, default=3, help="runs per size below 1M (median)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    openssl_sizes = {int(s) for s in args.openssl_sizes.split(",")}
    if args.quick:
        sizes, args.repeat = [s for s in sizes if s <= 100_000], 1
    pin_self(0)
    configure_logging("warning", process="bench-crl")
    print(f"load average before the run: {os.getloadavg()[0]:.2f} (other work skews the figures)")
    rng = random.Random(20260101)
    config_path = make_ca(kdf_rounds=2048)
    config = load_ca_config(config_path)
    workdir = Path(tempfile.mkdtemp(prefix="sekisho-bench-crl-"))
    results = []
    try:
        for size in sizes:
            rows = revoked_rows(size, rng)
            database = workdir / f"store-{size}.sqlite3"
            asyncio.run(create_store(database))
            started = time.perf_counter()
            insert_rows(database, rows)
            print(f"{size:>9,} revoked rows inserted in {time.perf_counter() - started:.1f} s")
            repeat = args.repeat if size < 1_000_000 else 1
            mine = asyncio.run(ours(config, database, repeat))
            theirs = None
            if size in openssl_sizes:
                theirs = openssl_gencrl(workdir, config, rows, repeat)
            results.append((size, mine, theirs))
            database.unlink()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(config_path.parent, ignore_errors=True)

    print()
    print(f"CRL build + sign, P-256 g1 key, core 0; medians of {args.repeat} run(s) "
          "(1 at 1M); times in s")
    header = (f"{'entries':>9} | {'cold':>6} {'ours total':>10} {'read':>6} {'build+sign':>10} "
              f"{'loop stall':>10} {'DER bytes':>10} | {'openssl':>8} {'DER bytes':>10} | "
              f"{'ours/openssl':>12}")
    print(header)
    print("-" * len(header))
    for size, mine, theirs in results:
        peer = (f"{theirs['total']:8.2f} {theirs['size']:10,.0f} | "
                f"{mine['total'] / theirs['total']:12.2f}") if theirs else (
                f"{'-':>8} {'-':>10} | {'-':>12}")
        print(f"{size:>9,} | {mine['first']:6.2f} {mine['total']:10.2f} {mine['read']:6.2f} "
              f"{mine['build']:10.2f} "
              f"{mine['stall'] * 1000:8.0f}ms {mine['size']:10,.0f} | {peer}")
    print("cold = the first publish of that size (no entry bytes cached); ours total = median "
          "publish('g1'), later runs re-use the cached entry bytes as the daemon does; "
          "publish = store read + build + sign (worker thread) + persist; "
          "read and build+sign timed again separately. loop stall = longest delay of a 1 ms "
          "timer on the event loop during publish. openssl = wall time of `openssl ca -gencrl` "
          "(process start, index.txt parse, build, sign, PEM write).")
    at_100k = next(((m, t) for s, m, t in results if s == 100_000 and t), None)
    if at_100k:
        ratio = at_100k[0]["total"] / at_100k[1]["total"]
        print(f"target at 100k: ours/openssl = {ratio:.2f} (<= 1.00, not slower): "
              f"{'met' if ratio <= 1 else 'MISSED'}")


if __name__ == "__main__":
    main()
