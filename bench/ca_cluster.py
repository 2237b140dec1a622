"""CA nodes on one PostgreSQL (issue 13): acquisitions/s with 1 and 2 nodes, OCSP req/s per
node on PostgreSQL vs SQLite (and the database statements that load costs), revoke on node 2
-> `revoked` from node 1's OCSP, and CRL leader failover over repeated kill -9.

Every node is a real `python -m ca serve` process; the database is a throwaway PostgreSQL
(common.pgdev, Unix socket only, fsync off); loopback only; every load is bounded by count and
time. The machine has 2 cores: a second node on it cannot add CPU, so 2 nodes cannot double
acquisitions/s here (each node already runs a pool of 2 key workers).

1. acquisitions: POST /v1/acquire on the internal API (what the gateway calls), production
   PBKDF2 rounds (600,000): one SQLite node, one PostgreSQL node, the load spread over two
   PostgreSQL nodes; same concurrency, alternating rounds; CPU per acquisition of the CA
   processes (+ the PostgreSQL server) from /proc. Peer: the in-process cryptographic floor
   (bench/issuance.py) times 2 cores, the machine's ceiling.
2. ocsp: one node pinned to core 0, `ab` on core 1, the same cached nonce-less request, a node
   on PostgreSQL vs a node on SQLite: req/s, p50/p99 and the node's CPU µs per response.
   "Never touches the database": every statement the server runs is logged (log_statement =
   all on the throwaway server) and pg_stat_database read, during the load vs an idle window
   of the same node (its background); a control of 200 requests for unknown serials shows
   their store lookups. Peer: `openssl ocsp` on the same certificate (new connection per
   request, as it answers one request per connection).
3. revocation: revoke on node 2 -> node 1's OCSP says `revoked`, LISTEN/NOTIFY (ours) vs the
   feed's 0.25 s poll alone (the peer: what a node behind a transaction-mode PgBouncer does).
4. failover: two nodes; kill -9 the CRL leader (after a random 0-1 s pause, so at any phase
   of the survivor's lock retries), time until the dead node's lock is gone from pg_locks,
   until the survivor holds it, and until the survivor's /metrics says it leads; restart the
   killed node; 10 times.

    python bench/ca_cluster.py [--quick] [--only acquisitions,ocsp,revocation,failover]
                               [--revocations 30] [--kills 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import random
import re
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._support import (
    AbResult,
    Daemon,
    descendants,
    index_line,
    median,
    percentile,
    run_ab,
)
from bench.cluster import _postgres_pids
from bench.gateway import _cpu_seconds
from bench.issuance import floor
from bench.ocsp import OCSP_TYPE, OpensslResponder
from ca.config import load_ca_config
from common.pgdev import LocalCluster
from common.tlsfiles import tls_client_context
from tests.support.ca_cluster import (
    cluster_configs,
    crl_leader,
    ocsp_status,
    public_url,
    two_nodes,
)
from tests.support.processes import REPO, Daemons, demo_config, launched

PRODUCTION_ROUNDS = 600_000
SECTIONS = ("acquisitions", "ocsp", "revocation", "failover")


@dataclass
class Scale:
    """How much of everything a run does (--quick: a smoke run of every section)."""

    acquisitions: int = 40  # per configuration and round
    acquisition_rounds: int = 2
    concurrency: int = 8
    ocsp_requests: int = 20_000
    ocsp_rounds: int = 3
    idle_window: float = 10.0  # seconds of a node's background, measured before its load
    revocations: int = 30
    kills: int = 10


QUICK = Scale(acquisitions=12, acquisition_rounds=1, ocsp_requests=3000, ocsp_rounds=1,
              idle_window=4.0, revocations=10, kills=3)


# -- configs and nodes -------------------------------------------------------------------------

_SCRATCH: list[Path] = []  # folders of this run (throwaway CA keys among them): removed at exit


def scratch(prefix: str) -> Path:
    """A new 0700 temporary folder, removed when the run ends."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    _SCRATCH.append(folder)
    return folder


def with_rounds(config: Path, rounds: int) -> Path:
    """Set the PKCS#12 PBKDF2 rounds of a test config (cluster_configs writes 2,048)."""
    text = re.sub(r"^pkcs12_kdf_rounds = \d+$", f"pkcs12_kdf_rounds = {rounds}",
                  config.read_text(), flags=re.MULTILINE)
    config.write_text(text)
    return config


def pg_configs(cluster: LocalCluster, database: str, extra: str = "") -> tuple[Path, Path]:
    """node1 and node2 configs on a new database of `cluster` (same keys, own ports)."""
    cluster.psql(f"CREATE DATABASE {database}")
    directory = scratch(f"sekisho-bench-{database}-")
    return cluster_configs(directory, cluster.dsn(database), extra=extra)


def sqlite_config() -> Path:
    """One node on the embedded SQLite store (the shipped config, own ports), initialised."""
    directory = scratch("sekisho-bench-sqlite-")
    config = demo_config(directory)
    subprocess.run([sys.executable, "-m", "ca", "--config", str(config), "init",
                    "--generate-passphrase"], cwd=REPO, check=True, capture_output=True)
    return config


def node_pids(node: Daemons | Daemon) -> list[int]:
    """A node's process and its key workers (what its CPU is)."""
    pid = node.process.pid
    return [pid, *(child for child, _ in descendants(pid))]


def internal_url(node: Daemons) -> str:
    """https://host:port of a node's internal API."""
    host, port = node.address("internal_listen")
    return f"https://{host}:{port}"


def token(node: Daemons) -> str:
    """The internal API's bearer token (the same file for nodes sharing a data folder)."""
    return (node.var / "secrets" / "ca-api-token").read_text().strip()


# -- 1. acquisitions ---------------------------------------------------------------------------


@dataclass
class Acquired:
    """One acquisition's certificate, kept for the OCSP section."""

    serial: str
    not_after: datetime
    user_id: str


def _session(nodes: list[Daemons]) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                 timeout=aiohttp.ClientTimeout(total=600),
                                 headers={"Authorization": f"Bearer {token(nodes[0])}"})


@functools.cache
def _pinned_context(certificate: str) -> ssl.SSLContext:
    """One client context per node certificate, so connections are reused as the gateway's."""
    return tls_client_context(Path(certificate))


async def _post(session: aiohttp.ClientSession, node: Daemons, path: str,
                body: dict[str, str]) -> dict[str, str]:
    """POST to a node's internal API (TLS pinned to its certificate); 201 expected."""
    context = _pinned_context(str(node.var / "ca" / "internal-tls.crt.pem"))
    async with session.post(internal_url(node) + path, json=body, ssl=context) as response:
        answer = await response.json()
        if response.status != 201:
            raise RuntimeError(f"{path}: HTTP {response.status} {answer}")
        return dict(answer)


async def _in_flight(count: int, width: int, work: Callable[[int], Awaitable[None]]) -> None:
    """work(0 .. count-1) with `width` calls in flight."""
    pending = list(range(count))[::-1]

    async def worker() -> None:
        while pending:
            await work(pending.pop())

    await asyncio.gather(*(worker() for _ in range(width)))


async def _issue_passwords(nodes: list[Daemons], users: list[str]) -> dict[str, str]:
    """An acquisition password for each user (what an officer does; setup, not measured)."""
    passwords: dict[str, str] = {}
    async with _session(nodes) as session:

        async def issue(index: int) -> None:
            user = users[index]
            body = await _post(session, nodes[index % len(nodes)],
                               f"/v1/users/{user}/acquisition-password", {})
            passwords[user] = body["acquisition_password"]

        await _in_flight(len(users), 4, issue)
    return passwords


async def _acquire_all(nodes: list[Daemons], passwords: dict[str, str], concurrency: int
                       ) -> tuple[float, list[float], list[Acquired]]:
    """Acquire for each user with `concurrency` requests in flight, user i going to node
    i mod len(nodes); returns (elapsed seconds, latencies, what was issued)."""
    users = list(passwords)
    latencies: list[float] = []
    acquired: list[Acquired] = []
    async with _session(nodes) as session:

        async def acquire(index: int) -> None:
            user = users[index]
            started = time.perf_counter()
            body = await _post(session, nodes[index % len(nodes)], "/v1/acquire",
                               {"user_id": user, "acquisition_password": passwords[user]})
            latencies.append(time.perf_counter() - started)
            acquired.append(Acquired(body["serial"], datetime.fromisoformat(body["not_after"]),
                                     user))

        started = time.perf_counter()
        await _in_flight(len(users), concurrency, acquire)
        return time.perf_counter() - started, latencies, acquired


@dataclass
class AcquisitionRun:
    """One configuration's measurement."""

    rate: float
    p50: float
    p99: float
    cpu_ms: float  # CA processes + database server, per acquisition
    db_cpu_ms: float


@dataclass
class Stores:
    """The CA of sections 1 and 2: two nodes on PostgreSQL, one on SQLite, production rounds."""

    node1: Path
    node2: Path
    sqlite: Path

    @classmethod
    def create(cls, cluster: LocalCluster) -> Stores:
        """Initialise both CAs (on the database `bench_acquire` of `cluster`)."""
        first, second = pg_configs(cluster, "bench_acquire")
        return cls(with_rounds(first, PRODUCTION_ROUNDS), with_rounds(second, PRODUCTION_ROUNDS),
                   with_rounds(sqlite_config(), PRODUCTION_ROUNDS))


def acquisitions(cluster: LocalCluster, scale: Scale, stores: Stores
                 ) -> dict[str, list[Acquired]]:
    """Section 1; returns the certificates issued per store (for the OCSP section)."""
    first, second, single = stores.node1, stores.node2, stores.sqlite
    print(f"\n(load average {os.getloadavg()[0]:.2f})")
    print(f"\n== 1. acquisitions/s: POST /v1/acquire (internal API, as the gateway calls it), "
          f"PBKDF2 {PRODUCTION_ROUNDS:,} rounds, c={scale.concurrency}, "
          f"{scale.acquisitions} per run, {scale.acquisition_rounds} round(s)")
    per_core = floor(5 if scale is QUICK else 10, PRODUCTION_ROUNDS)
    print(f"   peer/ceiling: the in-process cryptographic floor (bench/issuance.py: argon2id "
          f"check + P-256 key + sign + PKCS#12) is {per_core:.2f}/s on one core, so "
          f"{2 * per_core:.2f}/s on this machine's 2 cores")
    issued: dict[str, list[Acquired]] = {"sqlite": [], "postgresql": []}
    results: dict[str, list[AcquisitionRun]] = {}
    with two_nodes(first, second) as (node1, node2), \
            launched(single, "ca", "--config", str(single), "serve") as lone:
        lone.wait_internal_api()
        plans: list[tuple[str, str, list[Daemons]]] = [
            ("SQLite, 1 node", "sqlite", [lone]),
            ("PostgreSQL, 1 node", "postgresql", [node1]),
            ("PostgreSQL, 2 nodes", "postgresql", [node1, node2]),
        ]
        for index, node in enumerate((lone, node1, node2)):
            node.acquire(f"69{index:04d}")  # starts the node's key workers (spawned on demand)
        number = 0
        for _round in range(scale.acquisition_rounds):
            for name, store, nodes in plans:
                users = [f"7{number:05d}{i:04d}" for i in range(scale.acquisitions)]
                number += 1
                passwords = asyncio.run(_issue_passwords(nodes, users))

                def processes(nodes: list[Daemons] = nodes, store: str = store
                              ) -> tuple[list[int], list[int]]:
                    return ([pid for node in nodes for pid in node_pids(node)],
                            _postgres_pids(cluster) if store == "postgresql" else [])

                before = processes()
                cpu_before = {pid: _cpu_seconds([pid]) for pid in (*before[0], *before[1])}
                elapsed, latencies, acquired = asyncio.run(
                    _acquire_all(nodes, passwords, scale.concurrency))
                # Workers and backends started during the run count from zero.
                ca_after, db_after = processes()
                ca_cpu = sum(_cpu_seconds([pid]) - cpu_before.get(pid, 0.0) for pid in ca_after)
                db_cpu = sum(_cpu_seconds([pid]) - cpu_before.get(pid, 0.0) for pid in db_after)
                issued[store].extend(acquired)
                count = len(latencies)
                results.setdefault(name, []).append(AcquisitionRun(
                    count / elapsed, percentile(latencies, 0.5), percentile(latencies, 0.99),
                    (ca_cpu + db_cpu) * 1000 / count, db_cpu * 1000 / count))
    print(f"   {'configuration':<22} {'acq/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'CPU ms/acq':>10} {'of it DB':>8} {'vs 2-core floor':>15}")
    for name, runs in results.items():
        rate = median([r.rate for r in runs])
        print(f"   {name:<22} {rate:7.2f} {median([r.p50 for r in runs]) * 1000:7.0f} "
              f"{median([r.p99 for r in runs]) * 1000:7.0f} "
              f"{median([r.cpu_ms for r in runs]):10.0f} {median([r.db_cpu_ms for r in runs]):8.1f}"
              f" {rate / (2 * per_core):14.2f}x")
    one = median([r.rate for r in results["PostgreSQL, 1 node"]])
    two = median([r.rate for r in results["PostgreSQL, 2 nodes"]])
    lite = median([r.rate for r in results["SQLite, 1 node"]])
    print(f"   2 nodes / 1 node on PostgreSQL: {two / one:.2f}x; PostgreSQL / SQLite (1 node): "
          f"{one / lite:.2f}x")
    print("   (2 cores: one node's 2 key workers already use both, so a second node on the "
          "same machine cannot add throughput; on separate machines it adds its own cores. "
          "While other work runs here, 2 nodes' 4 workers get a larger share of the cores than "
          "1 node's 2, which moves acq/s; CPU ms/acq is the figure that holds)")
    return issued


# -- 2. OCSP per node ---------------------------------------------------------------------------


def ocsp_request(serial: str, issuer: x509.Certificate) -> bytes:
    """A nonce-less DER OCSP request for `serial` of `issuer` (SHA-1 CertID, RFC 6960 4.1.1)."""
    point = issuer.public_key().public_bytes(serialization.Encoding.X962,
                                             serialization.PublicFormat.UncompressedPoint)

    def sha1(data: bytes) -> bytes:
        digest = hashes.Hash(hashes.SHA1())  # noqa: S303 - the CertID hash of RFC 6960
        digest.update(data)
        return digest.finalize()

    return ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        sha1(issuer.subject.public_bytes()), sha1(point), int(serial, 16),
        hashes.SHA1()).build().public_bytes(serialization.Encoding.DER)  # noqa: S303


DB_COUNTERS = ("xact_commit", "xact_rollback", "tup_returned", "tup_fetched", "tup_inserted",
               "tup_updated", "tup_deleted")


def db_counters(cluster: LocalCluster, database: str) -> dict[str, int]:
    """pg_stat_database's counters of `database` (read from the `postgres` database, so this
    query is not counted in them)."""
    assert re.fullmatch(r"\w+", database), database  # one of ours, quoted below anyway
    out = cluster.psql(f"SELECT {', '.join(DB_COUNTERS)} FROM pg_stat_database "  # noqa: S608
                       f"WHERE datname = '{database}'")
    return dict(zip(DB_COUNTERS, map(int, out.strip().split("|")), strict=True))


@contextlib.contextmanager
def statements_logged(cluster: LocalCluster) -> Iterator[None]:
    """Every statement the throwaway server runs goes to its log (log_statement = all)."""
    cluster.psql("ALTER SYSTEM SET log_statement = 'all'")
    cluster.psql("SELECT pg_reload_conf()")
    time.sleep(0.5)  # backends pick the setting up when they next read their config
    try:
        yield
    finally:
        cluster.psql("ALTER SYSTEM RESET log_statement")
        cluster.psql("SELECT pg_reload_conf()")


def log_mark(cluster: LocalCluster) -> int:
    """Where the server's log ends now."""
    return cluster.log.stat().st_size


def statements(cluster: LocalCluster, start: int, end: int) -> Counter[str]:
    """The statements logged between two marks, by their first 60 characters (psql's own
    queries, made from the `postgres` database by this script, are left out)."""
    with cluster.log.open("rb") as log:
        log.seek(start)
        text = log.read(end - start).decode(errors="replace")
    found: Counter[str] = Counter()
    for line in text.splitlines():
        match = re.search(r"LOG:  (?:statement|execute [^:]*): (.*)", line)
        if match and "pg_stat_database" not in match.group(1) \
                and "log_statement" not in match.group(1) \
                and "pg_reload_conf" not in match.group(1):
            found[" ".join(match.group(1).split())[:60]] += 1
    return found


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {key: after[key] - before[key] for key in DB_COUNTERS}


def ocsp_answers(base: str) -> float:
    """The node's sekisho_ocsp_responses_total summed over statuses (from /metrics)."""
    with urllib.request.urlopen(base + "/metrics", timeout=10) as response:  # noqa: S310
        text = response.read().decode()
    return sum(float(value) for value in
               re.findall(r"^sekisho_ocsp_responses_total\{[^}]*\} (\S+)$", text, re.M))


def status_of(der: bytes) -> str:
    """The certificate status of a DER OCSP response."""
    return ocsp.load_der_ocsp_response(der).certificate_status.name.lower()


def one_certificate(config: Path, user: str) -> Acquired:
    """Acquire one certificate through a node of `config` (when section 1 did not run)."""
    with launched(config, "ca", "--config", str(config), "serve") as node:
        node.wait_internal_api()
        node.acquire(user)
        status, body = node.internal_api("GET", f"/v1/users/{user}/certificates")
        assert status == 200, body
        view = body["certificates"][0]
    return Acquired(view["serial"], datetime.fromisoformat(view["not_after"]), user)


@dataclass
class Window:
    """What the CA's database did during one window of time."""

    seconds: float
    counters: dict[str, int]
    statements: Counter[str]


class DatabaseWatch:
    """Windows of the database's activity: pg_stat_database counters and the logged
    statements, from one mark to the next."""

    def __init__(self, cluster: LocalCluster, database: str) -> None:
        self._cluster, self._database = cluster, database
        self._mark()

    def _mark(self) -> None:
        self._at = time.monotonic()
        self._counters = db_counters(self._cluster, self._database)
        self._log = log_mark(self._cluster)

    def window(self) -> Window:
        """Everything since the previous mark; marks again."""
        at, counters, log = self._at, self._counters, self._log
        self._mark()
        return Window(self._at - at, _delta(self._counters, counters),
                      statements(self._cluster, log, self._log))


def ocsp_per_node(cluster: LocalCluster, scale: Scale, stores: Stores,
                  issued: dict[str, list[Acquired]]) -> None:
    """Section 2."""
    configs = {"postgresql": stores.node1, "sqlite": stores.sqlite}
    for store, config in configs.items():
        if not issued.get(store):
            issued[store] = [one_certificate(config, "690000")]
    print(f"\n(load average {os.getloadavg()[0]:.2f})")
    print(f"\n== 2. OCSP req/s of one node, cached nonce-less request, node on core 0, ab on "
          f"core 1, {scale.ocsp_requests} requests per run (15 s max), medians of "
          f"{scale.ocsp_rounds} round(s)")
    workdir = scratch("sekisho-bench-ca-ocsp-")
    bodies: dict[str, Path] = {}
    issuers: dict[str, x509.Certificate] = {}
    for store, config in configs.items():
        keys = load_ca_config(config).keys.directory
        issuers[store] = x509.load_pem_x509_certificate((keys / "g1.crt.pem").read_bytes())
        bodies[store] = workdir / f"{store}.der"
        bodies[store].write_bytes(ocsp_request(issued[store][0].serial, issuers[store]))
    modes = (("new connection", False), ("keep-alive", True))
    runs: dict[tuple[str, bool], list[AbResult]] = {}
    cpu_us: dict[tuple[str, bool], list[float]] = {}  # the node's CPU per response
    idle: list[Window] = []
    loaded: list[tuple[Window, float]] = []  # (window, OCSP answers in it)
    control: tuple[int, Window] | None = None
    with statements_logged(cluster):
        for _round in range(scale.ocsp_rounds):
            # Alternate which store goes first: a drift of the machine's load hits both.
            order = list(configs.items())[:: 1 if _round % 2 == 0 else -1]
            for store, config in order:
                base = f"http://127.0.0.1:{load_ca_config(config).public_listen.port}"
                node = Daemon(config, cpus="0", stderr=workdir / f"{store}.log")
                try:
                    node.wait_ready(f"{base}/health")
                    probe = urllib.request.Request(  # noqa: S310 - loopback
                        base + "/ocsp", data=bodies[store].read_bytes(),
                        headers={"Content-Type": OCSP_TYPE})
                    with urllib.request.urlopen(probe, timeout=10) as response:  # noqa: S310
                        assert status_of(response.read()) == "good"  # and now it is cached
                    watch = None
                    if store == "postgresql":
                        # The node's background alone, then the same node under load.
                        time.sleep(2)  # past the start-up's statements
                        watch = DatabaseWatch(cluster, "bench_acquire")
                        time.sleep(scale.idle_window)
                        idle.append(watch.window())
                        answers_before = ocsp_answers(base)
                    for _label, keepalive in modes:
                        result, cpu = metered(node_pids(node), functools.partial(
                            run_ab, base + "/ocsp", requests=scale.ocsp_requests,
                            concurrency=64, keepalive=keepalive, time_limit=15,
                            socket_timeout=5, body_file=bodies[store], content_type=OCSP_TYPE))
                        runs.setdefault((store, keepalive), []).append(result)
                        cpu_us.setdefault((store, keepalive), []).append(cpu)
                    if watch is not None:
                        time.sleep(2)  # backends report their counters within ~1 s
                        loaded.append((watch.window(), ocsp_answers(base) - answers_before))
                        if control is None:
                            control = uncached_control(base, issuers[store], watch)
                finally:
                    node.stop()
    peer_runs = openssl_peer(workdir, configs["sqlite"], issued["sqlite"][0],
                             bodies["sqlite"], scale)

    def rps(results: list[AbResult]) -> float:
        return median([r.rps for r in results])

    def cell(results: list[AbResult], cpu: list[float]) -> str:
        errors = sum(r.errors for r in results)
        return (f"{rps(results):8.0f} {median([r.p50 for r in results]):6.1f} "
                f"{median([r.p99 for r in results]):6.1f} {median(cpu):6.0f}"
                + (f" ERR{errors}" if errors else ""))

    print(f"   {'mode, c=64':<16} | {'PostgreSQL r/s':>14} {'p50':>6} {'p99':>6} {'CPU µs':>6} | "
          f"{'SQLite r/s':>10} {'p50':>6} {'p99':>6} {'CPU µs':>6} | PG/SQLite r/s, CPU")
    for label, keepalive in modes:
        key_pg, key_lite = ("postgresql", keepalive), ("sqlite", keepalive)
        print(f"   {label:<16} | {cell(runs[key_pg], cpu_us[key_pg]):>35} | "
              f"{cell(runs[key_lite], cpu_us[key_lite]):>31} | "
              f"{rps(runs[key_pg]) / rps(runs[key_lite]):.2f}x, "
              f"{median(cpu_us[key_pg]) / median(cpu_us[key_lite]):.2f}x")
    if peer_runs:
        theirs = rps([run for run, _ in peer_runs])
        their_cpu = median([cpu for _, cpu in peer_runs])
        print(f"   peer `openssl ocsp`, new connection, c=64: {theirs:.0f} r/s, {their_cpu:.0f} µs "
              f"CPU per response; ours/peer r/s: PostgreSQL "
              f"{rps(runs[('postgresql', False)]) / theirs:.2f}x, SQLite "
              f"{rps(runs[('sqlite', False)]) / theirs:.2f}x (keep-alive: "
              f"{rps(runs[('postgresql', True)]) / theirs:.2f}x, "
              f"{rps(runs[('sqlite', True)]) / theirs:.2f}x)")
        print("   (CPU µs: the responder process's own user + system time per response, from "
              "/proc; it holds when other work on the machine moves r/s)")
    else:
        print("   peer `openssl ocsp`: no run completed (it hung 3 times)")
    database_report(idle, loaded, control)


def metered(pids: list[int], load: Callable[[], AbResult]) -> tuple[AbResult, float]:
    """Run `load`; returns its result and the CPU µs per response of the processes `pids`."""
    before = _cpu_seconds(pids)
    result = load()
    return result, (_cpu_seconds(pids) - before) * 1e6 / max(1, result.complete)


def uncached_control(base: str, issuer: x509.Certificate, watch: DatabaseWatch,
                     count: int = 200) -> tuple[int, Window]:
    """The detector's control: `count` requests for serials of our issuer that the node does
    not know, each looked up in the store; their statements must show in the window."""
    rng = random.Random(2026)
    for _ in range(count):
        serial = format(rng.getrandbits(120) | (1 << 120), "x")
        request = urllib.request.Request(  # noqa: S310 - loopback
            base + "/ocsp", data=ocsp_request(serial, issuer),
            headers={"Content-Type": OCSP_TYPE})
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            assert status_of(response.read()) == "unknown"
    time.sleep(2)
    return count, watch.window()


def openssl_peer(workdir: Path, config: Path, cert: Acquired, body: Path, scale: Scale
                 ) -> list[tuple[AbResult, float]]:
    """`openssl ocsp` on the same CA's keys, knowing the same certificate (one index.txt
    line), new connection per request (it answers one request per connection)."""
    (workdir / "index.txt").write_text(index_line(
        int(cert.serial, 16), int(cert.not_after.timestamp()), None, None, f"/CN={cert.user_id}"))
    results: list[tuple[AbResult, float]] = []
    for _round in range(scale.ocsp_rounds):
        for _attempt in range(3):
            peer = OpensslResponder(workdir, load_ca_config(config))
            try:
                peer.wait_ready(body.read_bytes())
                results.append(metered([peer.process.pid], functools.partial(
                    run_ab, peer.url, requests=scale.ocsp_requests, concurrency=64,
                    time_limit=15, socket_timeout=5, body_file=body, content_type=OCSP_TYPE)))
                break
            except RuntimeError:
                continue  # it spins on a connection closed without a request (BENCHMARKS.md)
            finally:
                peer.stop()
    return results


# Where each background statement of an idle node comes from (read in ca/ and common/).
BACKGROUND_SOURCES = (
    ("SELECT pg_advisory_unlock_all()", "asyncpg's reset of a pooled connection at release"),
    ("SELECT COALESCE(MAX(revocation_seq)", "the revocation feed's poll, every 0.25 s"),
    ("SELECT 1", "the leader locks' heartbeats (3 jobs), each every 0.5 s"),
    ("BEGIN", "the recovery sweep of dead intents and tries, every 2 s"),
    ("COMMIT", "(the recovery sweep)"),
    ("UPDATE certificates SET state = 'abandoned'", "(the recovery sweep)"),
    ("SELECT value FROM ca_counters", "(the recovery sweep)"),
    ("SELECT serial FROM certificates WHERE state = 'intended'", "(the recovery sweep)"),
    ("UPDATE acquisition_secrets", "(the recovery sweep)"),
)


def _source(statement: str) -> str:
    return next((why for prefix, why in BACKGROUND_SOURCES if statement.startswith(prefix)), "")


def database_report(idle: list[Window], loaded: list[tuple[Window, float]],
                    control: tuple[int, Window] | None) -> None:
    """What the PostgreSQL node's database did idle (its background) and under OCSP load."""
    print("   the PostgreSQL node's database (pg_stat_database of its database, and every "
          "statement it logged with log_statement = all), idle vs under the OCSP load:")
    seconds = sum(w.seconds for w in idle)
    background: Counter[str] = sum((w.statements for w in idle), Counter())
    print(f"     background of the idle node, per second ({seconds:.0f} s observed):")
    for text, count in background.most_common():
        print(f"       {count / seconds:5.2f}/s  {text:<60}  {_source(text)}")
    commits = sum(w.counters["xact_commit"] for w in idle) / seconds
    print(f"       = {commits:.1f} transactions/s, "
          f"{sum(w.counters['tup_returned'] for w in idle) / seconds:.0f} rows returned/s")
    for index, (window, answers) in enumerate(loaded):
        count = sum(window.statements.values())
        foreign = {text: n for text, n in window.statements.items() if text not in background}
        expected = commits * window.seconds
        print(f"     round {index + 1} under load: {answers:.0f} OCSP answers in "
              f"{window.seconds:.1f} s; {count} statements "
              f"({count / window.seconds:.2f}/s vs {sum(background.values()) / seconds:.2f}/s "
              f"idle), {window.counters['xact_commit']} transactions (background alone: "
              f"~{expected:.0f}); statements the idle node does not make: "
              f"{sum(foreign.values())}{' ' + str(foreign) if foreign else ''}")
    if control is not None:
        requests, window = control
        foreign = {text: n for text, n in window.statements.items() if text not in background}
        print(f"     control: {requests} requests for serials the node does not know -> "
              f"{sum(foreign.values())} statements the idle node does not make {foreign}: "
              f"a per-request database query would show above")
    print("     (a cached answer is served from the node's memory: no statement per OCSP "
          "request; the background's own ticks slow down while the event loop is busy)")


# -- 3. revocation latency ---------------------------------------------------------------------


def revocation_latencies(cluster: LocalCluster, database: str, listen: bool, count: int
                         ) -> list[float]:
    """Latencies (seconds) of `count` revocations on node 2 seen by node 1's OCSP."""
    first, second = pg_configs(cluster, database,
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


def revocation(cluster: LocalCluster, scale: Scale) -> None:
    """Section 3: both modes in one run; ours, the peer's and the ratio."""
    ours = revocation_latencies(cluster, "bench_listen", True, scale.revocations)
    peer = revocation_latencies(cluster, "bench_poll", False, scale.revocations)

    def line(name: str, samples: list[float]) -> str:
        return (f"   {name:34} p50 {percentile(samples, 0.5) * 1000:7.1f} ms  p99 "
                f"{percentile(samples, 0.99) * 1000:7.1f} ms  max {max(samples) * 1000:7.1f} ms")

    print(f"\n(load average {os.getloadavg()[0]:.2f})")
    print(f"\n== 3. revoke on node 2 -> 'revoked' from node 1's OCSP, {scale.revocations} "
          f"revocations each")
    print(line("ours: LISTEN/NOTIFY", ours))
    print(line("peer: 0.25 s poll of the feed", peer))
    print(f"   ratio (peer p50 / ours p50): "
          f"{percentile(peer, 0.5) / percentile(ours, 0.5):.1f}x")


# -- 4. leader failover ------------------------------------------------------------------------


def metrics_leader(node: Daemons) -> bool:
    """Whether the node's /metrics says it leads the CRL job."""
    try:
        with urllib.request.urlopen(public_url(node) + "/metrics", timeout=2) as response:  # noqa: S310
            text = response.read().decode()
    except OSError:
        return False
    return re.search(r'^sekisho_ca_leader\{job="crl",node="[^"]*"\} 1\.0$', text, re.M) is not None


class Nodes:
    """Two CA nodes, each restartable on its own (its process group killed on stop)."""

    def __init__(self, configs: dict[str, Path]) -> None:
        self.configs = configs
        self.running: dict[str, tuple[contextlib.ExitStack, Daemons]] = {}

    def start(self, name: str) -> Daemons:
        """Start node `name` and wait for its internal API."""
        stack = contextlib.ExitStack()
        config = self.configs[name]
        node = stack.enter_context(launched(config, "ca", "--config", str(config), "serve"))
        self.running[name] = (stack, node)
        node.wait_internal_api()
        return node

    def node(self, name: str) -> Daemons:
        """A running node."""
        return self.running[name][1]

    def stop(self, name: str) -> None:
        """Kill node `name`'s process group (its orphaned key workers with it)."""
        stack, _node = self.running.pop(name)
        stack.close()

    def close(self) -> None:
        """Stop every node."""
        for name in list(self.running):
            self.stop(name)


def failover(cluster: LocalCluster, scale: Scale) -> None:
    """Section 4: kill -9 the CRL leader, time until the other node leads; restart; repeat."""
    first, second = pg_configs(cluster, "bench_failover")
    dsn = cluster.dsn("bench_failover")
    nodes = Nodes({"node1": first, "node2": second})
    rng = random.Random(13)
    to_metrics: list[float] = []
    to_lock: list[float] = []
    to_release: list[float] = []  # the dead leader's lock gone from pg_locks
    try:
        for name in ("node1", "node2"):
            nodes.start(name)
        for _kill in range(scale.kills):
            deadline = time.monotonic() + 30
            while (leader := crl_leader(dsn)) is None or not metrics_leader(
                    nodes.node(leader)):
                if time.monotonic() > deadline:
                    raise SystemExit("no CRL leader within 30 s")
                time.sleep(0.05)
            survivor = "node2" if leader == "node1" else "node1"
            assert not metrics_leader(nodes.node(survivor))
            # A restarted node starts contending at a fixed offset from when it answers: a
            # random pause puts the kill at any phase of the survivor's 0.5 s lock retries.
            time.sleep(rng.uniform(0, 1.0))
            killed = nodes.node(leader)
            started = time.monotonic()
            os.kill(killed.process.pid, signal.SIGKILL)
            released = lock_seen = None
            while not metrics_leader(nodes.node(survivor)):
                if lock_seen is None:
                    holder = crl_leader(dsn)
                    if released is None and holder != leader:
                        released = time.monotonic() - started
                    if holder == survivor:
                        lock_seen = time.monotonic() - started
                if time.monotonic() - started > 30:
                    raise SystemExit("the survivor did not take over within 30 s")
                time.sleep(0.005)
            to_metrics.append(time.monotonic() - started)
            to_lock.append(lock_seen if lock_seen is not None else to_metrics[-1])
            to_release.append(released if released is not None else to_lock[-1])
            nodes.stop(leader)
            nodes.start(leader)
    finally:
        nodes.close()

    def line(name: str, samples: list[float]) -> str:
        return (f"   {name:46} min {min(samples) * 1000:6.0f} ms  median "
                f"{statistics.median(samples) * 1000:6.0f} ms  max {max(samples) * 1000:6.0f} ms")

    print(f"\n(load average {os.getloadavg()[0]:.2f})")
    print(f"\n== 4. CRL leader failover, 2 nodes, {scale.kills} kill -9 of the leader "
          f"(restarted after each)")
    print(line("kill -9 -> the dead node's lock is released", to_release))
    print(line("kill -9 -> pg_locks shows the survivor's lock", to_lock))
    print(line("kill -9 -> survivor's /metrics says leader", to_metrics))
    print("   (the dead session's lock is freed when PostgreSQL sees its socket close; the "
          "survivor retries pg_try_advisory_lock every 0.5 s, so ~0-0.5 s is expected; a "
          "silent network loss instead takes up to idle_session_timeout, 4 s)")


# -- main --------------------------------------------------------------------------------------


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[LocalCluster]:
    """A throwaway PostgreSQL server, destroyed afterwards."""
    cluster = LocalCluster.throwaway()
    try:
        cluster.start(timeout=30)
        yield cluster
    finally:
        cluster.destroy()


def main() -> None:
    """Run the chosen sections (all by default) on one throwaway PostgreSQL."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of every section")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections of {', '.join(SECTIONS)}")
    parser.add_argument("--revocations", type=int, help="revocations per mode (default 30)")
    parser.add_argument("--kills", type=int, help="leader kills (default 10)")
    args = parser.parse_args()
    chosen = [part.strip() for part in args.only.split(",") if part.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s): {', '.join(unknown)}")
    scale = QUICK if args.quick else Scale()
    if args.revocations:
        scale.revocations = args.revocations
    if args.kills:
        scale.kills = args.kills
    print(f"bench/ca_cluster.py: {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.2f} before the run (other work skews the figures)")
    started = time.monotonic()
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(lambda: [shutil.rmtree(folder, ignore_errors=True)
                                  for folder in _SCRATCH])
        cluster = cleanup.enter_context(throwaway_postgres())
        if "acquisitions" in chosen or "ocsp" in chosen:
            stores = Stores.create(cluster)
            issued = acquisitions(cluster, scale, stores) if "acquisitions" in chosen else {}
            if "ocsp" in chosen:
                ocsp_per_node(cluster, scale, stores, issued)
        if "revocation" in chosen:
            revocation(cluster, scale)
        if "failover" in chosen:
            failover(cluster, scale)
    print(f"\n(total {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
