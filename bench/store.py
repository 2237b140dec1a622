"""The shared store's cost on the proxied hot path (issue 12: "at most 10%"): one gateway on
the embedded SQLite store against one on PostgreSQL, same CA, backend, user and load, same run.

The PostgreSQL gateway's database is made from the SQLite one by `sekisho-gateway db copy`
(so the same bench user logs in on both). PostgreSQL is a throwaway local server
(`common.pgdev`, Unix socket). Each gateway is pinned like bench/gateway.py's (gateway on core
0, ab on core 1); keep-alive GET /bench, c=16, measured in turns, medians of `--runs`.

Printed: req/s, p50/p99, the gateway's CPU microseconds per request, and the ratio
PostgreSQL/SQLite (the cost of the shared store on the hot path is 1 - ratio).

    .venv/bin/python bench/store.py [--requests 20000] [--runs 3]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._support import ROOT, median
from bench.gateway import Stack, _line
from common.pgdev import LocalCluster, PostgresUnavailable


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("ab") is None:
        print("ab is needed (Debian: apache2-utils)", file=sys.stderr)
        return 1
    try:
        cluster = LocalCluster.throwaway()
    except PostgresUnavailable as exc:
        print(exc, file=sys.stderr)
        return 1
    try:
        cluster.start(timeout=30)
        cluster.psql("CREATE DATABASE bench_gateway")
        dsn = cluster.dsn("bench_gateway")
        with Stack() as stack:
            subprocess.run([sys.executable, "-m", "gateway", "--config",
                            str(stack.config_path), "db", "copy", "--to", dsn],
                           check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            sqlite = stack.start_gateway("sqlite")
            postgres = stack.start_gateway("postgresql", f'database = "{dsn}"\n')
            n, c = args.requests, args.concurrency
            for gateway in (sqlite, postgres):  # warm-up; also proves requests succeed
                warm = stack.run("ours", 2000, c, gateway=gateway)
                if warm["non2xx"]:
                    raise RuntimeError(f"{gateway.name}: {warm['non2xx']:.0f} non-2xx answers")
            runs: dict[str, list[dict[str, float | str]]] = {"sqlite": [], "postgresql": []}
            for _ in range(args.runs):
                for gateway in (sqlite, postgres):
                    runs[gateway.name].append(stack.run("ours", n, c, gateway=gateway))
        print(f"== proxied GET /bench (1 KiB), keep-alive, c={c}, n={n}, medians of "
              f"{args.runs}; one gateway process each, store: SQLite file vs PostgreSQL")
        result = {name: {k: (median([float(r[k]) for r in rs]) if k != "tls" else rs[0][k])
                         for k in rs[0]} for name, rs in runs.items()}
        for name, r in result.items():
            print(_line(name[:7], r, n))
        rps = {name: float(r["rps"]) for name, r in result.items()}
        cpu = {name: float(r["proxy_us"]) for name, r in result.items()}
        print(f"ratio postgresql/sqlite: req/s {rps['postgresql'] / rps['sqlite']:.2f}, "
              f"gateway CPU per request {cpu['postgresql'] / cpu['sqlite']:.2f}   "
              f"(target: the shared store costs the hot path at most 10%)")
    finally:
        cluster.destroy()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
