"""Time from a revocation committed on CA node 2 to `revoked` from node 1's OCSP (issue 13).

Two real `python -m ca serve` nodes on one throwaway PostgreSQL (common.pgdev, fsync off), the
same key files. Certificates are acquired through node 1; each is then revoked through node 2's
internal API and node 1's OCSP is asked every 2 ms until it answers "revoked". Measured in the
same run with node 1 woken by LISTEN/NOTIFY (ours, `ca.revocation_listen = true`) and with
the feed's 0.25 s poll alone (the peer: what each node did before, and what remains behind a
transaction-mode PgBouncer). Loopback only; bounded by count and a 10 s wait per revocation.

    python bench/ca_cluster.py [--quick] [--revocations 30]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._support import percentile
from common.pgdev import LocalCluster
from tests.support.ca_cluster import cluster_configs, ocsp_status, two_nodes


def measure(cluster: LocalCluster, database: str, listen: bool, count: int) -> list[float]:
    """Latencies (seconds) of `count` revocations on node 2 seen by node 1's OCSP."""
    cluster.psql(f"CREATE DATABASE {database}")
    directory = Path(tempfile.mkdtemp(prefix="sekisho-bench-cluster-"))
    first, second = cluster_configs(directory, cluster.dsn(database),
                                    extra=f"revocation_listen = {str(listen).lower()}")
    latencies: list[float] = []
    with two_nodes(first, second) as (node1, node2):
        issuer = x509.load_pem_x509_certificate(
            (node1.var / "keys" / "g1.crt.pem").read_bytes())
        serials = []
        for i in range(count):
            node1.acquire(f"5{i:05d}")
            status, body = node1.internal_api("GET", f"/v1/users/5{i:05d}/certificates")
            serials.append(body["certificates"][0]["serial"])
        for serial in serials:
            assert ocsp_status(node1, serial, issuer) == "good"
            started = time.monotonic()
            status, body = node2.internal_api("POST", "/v1/revoke",
                                              {"serial": serial, "reason": "superseded"})
            assert status == 200, body
            while ocsp_status(node1, serial, issuer) != "revoked":
                if time.monotonic() - started > 10:
                    raise SystemExit(f"node 1 never answered revoked for {serial}")
                time.sleep(0.002)
            latencies.append(time.monotonic() - started)
            time.sleep(0.05)  # spread the revocations over the poll's phase
    return latencies


def main() -> None:
    """Run both modes in one run and print ours, the peer's and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revocations", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="10 revocations")
    args = parser.parse_args()
    count = 10 if args.quick else args.revocations
    cluster = LocalCluster.throwaway()
    try:
        cluster.start(timeout=30)
        ours = measure(cluster, "bench_listen", True, count)
        peer = measure(cluster, "bench_poll", False, count)
    finally:
        cluster.destroy()

    def line(name: str, samples: list[float]) -> str:
        return (f"{name:34} p50 {percentile(samples, 0.5) * 1000:7.1f} ms  p99 "
                f"{percentile(samples, 0.99) * 1000:7.1f} ms  max {max(samples) * 1000:7.1f} ms")

    print(f"revoke on node 2 -> 'revoked' from node 1's OCSP, {count} revocations each")
    print(line("ours: LISTEN/NOTIFY", ours))
    print(line("peer: 0.25 s poll of the feed", peer))
    print(f"ratio (peer p50 / ours p50): "
          f"{percentile(peer, 0.5) / percentile(ours, 0.5):.1f}x")


if __name__ == "__main__":
    main()
