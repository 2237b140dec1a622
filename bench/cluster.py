"""Cluster benchmark: the gateway with `workers` 1 and 2 vs nginx `worker_processes` 1 and 2.

One run on loopback, on this machine's 2 cores shared by everything (BENCHMARKS.md "Several
processes on 2 cores"), so req/s alone says little: for every configuration it prints the CPU
microseconds per request of each process (gateway workers, backend, PostgreSQL when used),
read from /proc, next to req/s and p99.

1. Proxied keep-alive mTLS GET /bench (the bench user logged in), two `ab -k` processes, one
   pinned to each core, c/2 connections each: ours workers=1, ours workers=2, nginx 1, nginx 2.
2. Logins/s (real OWASP argon2id, `--logins` users logging in at once) and the p99 of proxied
   requests meanwhile, for workers 1 and 2.

Sessions are still per gateway process (the shared store is not merged yet), so with two
workers each `ab` must reach the worker that holds its session: the bench steers each
worker's listening socket to one core with SO_INCOMING_CPU (set from outside through
pidfd_getfd; the gateway itself does not do this), and logs in on each worker from a thread
pinned to that core. Every ab run must show 0 non-2xx answers, which proves the steering.
Once sessions are shared, the steering is unnecessary but harmless.

    .venv/bin/python bench/cluster.py [--store sqlite] [--requests 20000] [--concurrency 16]

`--store postgresql` runs every gateway of the run on a throwaway PostgreSQL (its server
processes' CPU is counted too).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._support import ROOT, free_port, median, run_ab
from bench.gateway import Client, Stack, _cpu_seconds, _nginx_conf, _wait_tls
from common.pgdev import LocalCluster

# The store backend -> the [gateway] lines that select it.
STORES = {"sqlite": lambda stack: "",
          "postgresql": lambda stack: f'database = "{stack.pg_dsn}"'}
SESSION_COOKIE = "__Host-sekisho-session"
_SO_INCOMING_CPU = 49  # <asm-generic/socket.h>
_SYS_PIDFD_GETFD = 438  # x86-64 and aarch64


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                    inodes.add(fields[9])
    return inodes


def steer_to_cpu(pid: int, port: int, cpu: int) -> None:
    """Set SO_INCOMING_CPU = `cpu` on process `pid`'s listening socket on `port`: the kernel
    then hands it the connections whose SYN it handles on that core (a loopback client's)."""
    inodes = _listening_inodes(port)
    libc = ctypes.CDLL(None, use_errno=True)
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(entry)
            if target.startswith("socket:[") and target[8:-1] in inodes:
                pidfd = os.pidfd_open(pid)
                try:
                    fd = libc.syscall(_SYS_PIDFD_GETFD, pidfd, int(entry.name), 0)
                    if fd < 0:
                        raise OSError(ctypes.get_errno(), "pidfd_getfd")
                    sock = socket.socket(fileno=fd)
                    sock.setsockopt(socket.SOL_SOCKET, _SO_INCOMING_CPU, cpu)
                    sock.close()  # our duplicate only; the worker's socket stays open
                finally:
                    os.close(pidfd)
                return
    raise RuntimeError(f"no listening socket on port {port} in process {pid}")


def _descendants(pid: int) -> list[int]:
    from bench._support import descendants

    return [child for child, _ in descendants(pid)]


def _on_cpu(cpu: int, action: object) -> object:
    """Run `action()` in a thread pinned to `cpu` (its connections' SYNs are handled there)."""
    result: list[object] = []

    def run() -> None:
        os.sched_setaffinity(0, {cpu})
        assert callable(action)
        result.append(action())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return result[0]


@dataclass
class Side:
    """One configuration under load: where ab goes, with which cookie per core, whose CPU."""

    name: str
    port: int
    cookies: list[dict[str, str]]  # per ab process (core 0, core 1)
    pids: dict[str, list[int]] = field(default_factory=dict)  # label -> processes to meter


def _postgres_pids(cluster: LocalCluster) -> list[int]:
    """The postmaster (first line of postmaster.pid) and its backends and workers."""
    postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
    return [postmaster, *_descendants(postmaster)]


class ClusterStack(Stack):
    """bench/gateway.py's stack (CA, backend, users), nothing pinned but the load; with
    `postgres`, a throwaway PostgreSQL whose DSN the store's config line uses."""

    def __init__(self, *, logins: int = 0, store: str = "sqlite",
                 postgres: LocalCluster | None = None) -> None:
        super().__init__(logins=logins)
        self.store = store
        self.postgres = postgres
        self.pg_dsn = postgres.dsn() if postgres is not None else ""

    def _gateway_section(self, port: int) -> str:
        # Every gateway config of the run (the users' creation included) names the store.
        return super()._gateway_section(port) + STORES[self.store](self) + "\n"

    def _spawn(self, command: list[str], log: str, cwd: Path = ROOT
               ) -> subprocess.Popen[bytes]:
        with (self.folder / log).open("ab") as handle:
            process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL,
                                       stderr=handle)
        self.processes.append(process)
        return process

    def _stop_process(self, process: subprocess.Popen[bytes]) -> None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self.processes.remove(process)

    def start_ours(self, workers: int) -> tuple[Side, subprocess.Popen[bytes]]:
        """`sekisho-gateway serve --workers N`; one session per worker, steered per core."""
        port = free_port()
        config = self.folder / f"config-w{workers}.toml"
        config.write_text(self._base_config + self._gateway_section(port))
        process = self._spawn([sys.executable, "-m", "gateway", "--config", str(config),
                               "serve", "--workers", str(workers)], f"gateway-w{workers}.log")
        _wait_tls(port)
        deadline = time.monotonic() + 60
        while len(_listening_inodes(port)) < workers:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"{workers} workers did not listen on {port}")
            time.sleep(0.1)
        pids = _descendants(process.pid) if workers > 1 else [process.pid]
        if workers > 1:
            for cpu in (0, 1):
                steer_to_cpu(sorted(pids)[cpu], port, cpu)
        cookies = [_on_cpu(0, lambda: self._login(port))]
        # A session another worker also knows (a shared store) is used on both cores; else
        # the worker on core 1 gets its own login.
        shared = _on_cpu(1, lambda: self._works(port, cookies[0]))
        cookies.append(cookies[0] if shared else _on_cpu(1, lambda: self._login(port)))
        metered = {"gateway": sorted({process.pid, *pids}), "backend": [self.backend.pid]}
        if self.postgres is not None:  # the database server's CPU is part of the cost
            metered["postgresql"] = _postgres_pids(self.postgres)
        side = Side(f"ours w={workers}", port, cookies,  # type: ignore[arg-type]
                    metered)
        return side, process

    def _works(self, port: int, cookie: dict[str, str]) -> bool:
        client = Client(port, self.bench_cert)
        try:
            client.cookies = {SESSION_COOKIE: cookie["Cookie"].split("=", 1)[1]}
            return client.request("GET", "/bench")[0] == 200
        finally:
            client.close()

    def _login(self, port: int) -> dict[str, str]:
        client = Client(port, self.bench_cert)
        try:
            status = client.login(relogin=True)
            assert status == 303, f"bench login failed ({status})"
            return {"Cookie": f"{SESSION_COOKIE}={client.cookies[SESSION_COOKIE]}"}
        finally:
            client.close()

    def start_nginx_workers(self, workers: int) -> tuple[Side, subprocess.Popen[bytes]]:
        """nginx with `worker_processes` N (bench/gateway.py's configuration otherwise)."""
        port = free_port()
        conf = _nginx_conf(self.folder, port, self.backend_port,
                           self.folder / "var/gateway/tls/server.crt.pem",
                           self.folder / "var/gateway/tls/server.key.pem",
                           self.folder / "var/gateway/trust-bundle.pem")
        conf.write_text(conf.read_text().replace("worker_processes 1;",
                                                 f"worker_processes {workers};"))
        process = self._spawn(["nginx", "-p", str(self.folder / "nginx-temp"), "-c",
                               str(conf)], "nginx-stderr.log", cwd=self.folder)
        _wait_tls(port)
        time.sleep(0.5)
        return Side(f"nginx w={workers}", port, [{}, {}],
                    {"nginx": [process.pid, *_descendants(process.pid)],
                     "backend": [self.backend.pid]}), process

    def load(self, side: Side, requests: int, concurrency: int) -> dict[str, float]:
        """Two `ab -k` (one per core, c/2 each) at once; req/s summed, the worse p99, and the
        CPU microseconds per request of each metered process group."""
        before = {label: _cpu_seconds(pids) for label, pids in side.pids.items()}
        results = [None, None]

        def one(cpu: int) -> None:
            results[cpu] = run_ab(  # type: ignore[call-overload]
                f"https://127.0.0.1:{side.port}/bench", requests=requests // 2,
                concurrency=max(concurrency // 2, 1), keepalive=True, cert=self.bench_cert,
                headers=side.cookies[cpu], cpus=str(cpu))

        threads = [threading.Thread(target=one, args=(cpu,)) for cpu in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if None in results:
            raise RuntimeError("an ab run failed")
        measured: dict[str, float] = {
            "rps": sum(r.rps for r in results),  # type: ignore[attr-defined]
            "p99": max(r.p99 for r in results),  # type: ignore[attr-defined]
            "non2xx": sum(r.errors for r in results),  # type: ignore[attr-defined]
        }
        for label, pids in side.pids.items():
            measured[f"{label}_us"] = (_cpu_seconds(pids) - before[label]) / requests * 1e6
        return measured

    def login_storm(self, side: Side, count: int, requests: int, concurrency: int
               ) -> tuple[float, dict[str, float], list[int]]:
        """`count` users log in at once while proxied load runs: logins/s, the load's figures,
        the login statuses."""
        clients = [Client(side.port, cert) for cert in self.login_certs[:count]]
        statuses: list[int] = []
        barrier = threading.Barrier(len(clients) + 1)
        finished: list[float] = []

        def login(client: Client) -> None:
            barrier.wait()
            statuses.append(client.login(relogin=True))
            finished.append(time.monotonic())
            client.close()

        threads = [threading.Thread(target=login, args=(c,)) for c in clients]
        for thread in threads:
            thread.start()
        barrier.wait()
        started = time.monotonic()
        busy = self.load(side, requests, concurrency)
        for thread in threads:
            thread.join()
        return count / (max(finished) - started), busy, sorted(set(statuses))


def _row(side: Side, r: dict[str, float]) -> str:
    costs = "  ".join(f"{k[:-3]} {v:.0f} us" for k, v in r.items() if k.endswith("_us"))
    return (f"{side.name:11} {r['rps']:7.0f} req/s  p99 {r['p99']:5.0f} ms  "
            f"CPU/request: {costs}  non-2xx {r['non2xx']:.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--store", default="sqlite", choices=["sqlite", "postgresql"])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--logins", type=int, default=20)
    args = parser.parse_args()
    if args.store not in STORES:
        print(f"--store {args.store}: the gateway's store does not take a DSN yet "
              "(see STORES in bench/cluster.py)", file=sys.stderr)
        return 1
    for tool in ("ab", "nginx", "taskset"):
        if shutil.which(tool) is None:
            print(f"{tool} is needed (Debian: apache2-utils, nginx-light, util-linux)",
                  file=sys.stderr)
            return 1
    print(f"== setup: {os.cpu_count()} cores shared by all; store {args.store}; two ab -k "
          f"(c={args.concurrency // 2} each) pinned to core 0 and core 1; gateway, nginx, "
          "backend unpinned")
    postgres = LocalCluster.throwaway() if args.store == "postgresql" else None
    if postgres is not None:
        postgres.start()
    try:
        return _measure(args, postgres)
    finally:
        if postgres is not None:
            postgres.destroy()


def _measure(args: argparse.Namespace, postgres: LocalCluster | None) -> int:
    n, c = args.requests, args.concurrency
    with ClusterStack(logins=args.logins, store=args.store, postgres=postgres) as stack:
        stack.start_gateway("setup")  # creates the server certificate and trust bundle cache
        stack._stop_process(stack.gateways.pop().process)
        results: dict[str, list[dict[str, float]]] = {}
        sides: dict[str, Side] = {}
        login_figures = []
        for kind, workers in (("ours", 1), ("ours", 2), ("nginx", 1), ("nginx", 2)):
            side, process = (stack.start_ours(workers) if kind == "ours"
                             else stack.start_nginx_workers(workers))
            try:
                stack.load(side, 2000, c)  # warm-up
                runs = [stack.load(side, n, c) for _ in range(args.runs)]
                sides[side.name], results[side.name] = side, runs
                if kind == "ours":
                    login_figures.append((side, *stack.login_storm(side, args.logins,
                                                              max(2000, n // 4), c)))
            finally:
                stack._stop_process(process)
        print(f"== proxied GET /bench (1 KiB), keep-alive mTLS, c={c}, n={n}, "
              f"medians of {args.runs}")
        medians = {name: {k: median([r[k] for r in runs]) for k in runs[0]}
                   for name, runs in results.items()}
        for name, figures in medians.items():
            print(_row(sides[name], figures))
        rps = {name: figures["rps"] for name, figures in medians.items()}
        print(f"ratio ours/nginx: w=1 {rps['ours w=1'] / rps['nginx w=1']:.2f}   "
              f"w=2 {rps['ours w=2'] / rps['nginx w=2']:.2f}   "
              f"scaling 1->2: ours {rps['ours w=2'] / rps['ours w=1']:.2f}  "
              f"nginx {rps['nginx w=2'] / rps['nginx w=1']:.2f}")
        print(f"== {args.logins} logins at once (argon2id) while proxied load runs")
        idle = {name: figures["p99"] for name, figures in medians.items()}
        for side, per_second, busy, statuses in login_figures:
            print(f"{side.name:11} {per_second:5.1f} logins/s (statuses {statuses}); proxied "
                  f"meanwhile {busy['rps']:.0f} req/s p99 {busy['p99']:.0f} ms "
                  f"(idle p99 {idle[side.name]:.0f} ms), non-2xx {busy['non2xx']:.0f}")
    print(textwrap.dedent("""
        CPU/request counts each process group's user+system time during the run divided by
        the requests (gateway: supervisor + workers; nginx: master + workers).""").strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
