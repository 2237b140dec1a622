"""The CA cluster's leader jobs (issue 13): "the few jobs that must have one author (signing
the next CRL, re-signing cached OCSP answers, renewing responder certificates, campaign
cutovers) done by an elected leader that another node replaces within seconds when it dies
... no job is done twice or skipped".

Fencing at store level (two contenders on one real PostgreSQL); the responder renewal and the
cutover record with two in-process CA nodes sharing one database and a FakeClock (each with
its own copy of the key folder, as on two hosts); the network drop with two real daemons,
one of them reaching PostgreSQL through a socket proxy the test stops forwarding.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import asyncpg
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from ca.cutover_job import CutoverRecorder
from ca.leadership import CRL_JOB, CUTOVER_JOB, JOBS, RESPONDER_JOB, LeaderJob
from ca.store_pg import PgStore
from common.errors import Unavailable
from common.pgdev import LocalCluster
from common.postgres import PostgresSettings, current_leader
from policy.clock import FakeClock
from tests.conftest import CaHarness, init_ca, key_backend_config, start_ca, write_config
from tests.support.ca_cluster import cluster_configs, public_url
from tests.support.pg_proxy import SocketProxy
from tests.support.processes import REPO, Daemons, launched
from tests.support.servers import free_port

NOW = datetime(2026, 12, 1, tzinfo=UTC)


async def _until(condition: Callable[[], bool], seconds: float, what: str) -> float:
    """Wait (bounded) until `condition()`; how long it took."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, f"{what} not within {seconds} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def _open(dsn: str, node: str) -> PgStore:
    return await PgStore.open(PostgresSettings(dsn=dsn, application_name=f"sekisho-ca:{node}"))


async def _terminate_lock_connection(dsn: str, job: LeaderJob) -> None:
    """What a DBA's pg_terminate_backend (or a dead network the server noticed) does."""
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", job.election.backend_pid)
    finally:
        await conn.close()


def _unaware(job: LeaderJob) -> None:
    """Make `job` a deposed leader that has not noticed yet (frozen, or its network gone
    silently): it keeps believing it leads, so only the fence inside the transaction can
    stop its writes."""

    async def never_step_down() -> None:
        return None

    job.election._step_down = never_step_down  # type: ignore[method-assign]


async def _save(store: PgStore, job: LeaderJob | None, number: int) -> bool:
    return await store.save_crl("g1", number, NOW, NOW + timedelta(days=1), b"crl%d" % number,
                                0, fence=None if job is None else job.fence)


class TestFencing:
    """A deposed leader's writes are refused inside the writing transaction."""

    def test_lost_lock_cannot_store_a_crl(self, postgres_dsn: str) -> None:
        """Its lock connection terminated (pg_terminate_backend), a leader that has not
        noticed cannot store a CRL, though the number check alone would accept it."""

        async def run() -> None:
            store = await _open(postgres_dsn, "node1")
            job = LeaderJob(store, CRL_JOB, "node1", FakeClock(NOW))
            try:
                await job.start()
                await _until(lambda: job.is_leader, 10, "election")
                assert await _save(store, job, 1)  # the leader stores
                _unaware(job)
                await _terminate_lock_connection(postgres_dsn, job)
                assert job.is_leader  # it does not know yet
                assert not await _save(store, job, 2)  # fenced: lock lost
                assert await store.crl_number("g1") == 1
                assert await _save(store, None, 2)  # the number check alone would accept it
            finally:
                await job.close()
                await store.close()

        asyncio.run(run())

    def test_superseded_term_cannot_store_a_crl(self, postgres_dsn: str) -> None:
        """Node 2 is elected after node 1 lost its lock: node 1's CRL (even with a number
        above the stored one) is refused, node 2's is stored; the terms are 1 then 2."""

        async def run() -> None:
            first, second = await _open(postgres_dsn, "node1"), await _open(postgres_dsn, "node2")
            old = LeaderJob(first, CRL_JOB, "node1", FakeClock(NOW))
            new = LeaderJob(second, CRL_JOB, "node2", FakeClock(NOW))
            try:
                await old.start()
                await _until(lambda: old.is_leader, 10, "node1's election")
                await new.start()
                assert old.term == 1
                _unaware(old)
                await _terminate_lock_connection(postgres_dsn, old)
                await _until(lambda: new.is_leader, 10, "node2's election")
                assert new.term == 2
                assert not await _save(first, old, 5)
                assert await _save(second, new, 1)
                assert await first.load_crl("g1") is not None
                assert (await first.load_crl("g1"))[3] == b"crl1"  # type: ignore[index]
                assert (await first.leader_terms())[CRL_JOB] == (2, "node2")
            finally:
                await old.close()
                await new.close()
                await first.close()
                await second.close()

        asyncio.run(run())

    def test_new_term_waits_for_the_old_leaders_open_write(self, postgres_dsn: str) -> None:
        """A write the old leader began while it still led commits before the new leader's
        term starts: the new leader's claim waits for it (the term row is share-locked), so
        the two leaders' writes never interleave."""

        async def run() -> None:
            first, second = await _open(postgres_dsn, "node1"), await _open(postgres_dsn, "node2")
            old = LeaderJob(first, CRL_JOB, "node1", FakeClock(NOW))
            new = LeaderJob(second, CRL_JOB, "node2", FakeClock(NOW))
            writing, finish = asyncio.Event(), asyncio.Event()

            async def slow_write(conn: asyncpg.Connection) -> int:
                writing.set()
                await finish.wait()
                return int(await conn.fetchval("SELECT 1"))

            watcher = await asyncpg.connect(postgres_dsn)
            try:
                await old.start()
                await _until(lambda: old.is_leader, 10, "node1's election")
                write = asyncio.create_task(first.fenced(old.fence, slow_write))
                await asyncio.wait_for(writing.wait(), 10)
                _unaware(old)
                await _terminate_lock_connection(postgres_dsn, old)
                await new.start()
                await _until(lambda: new.election.is_leader, 10, "node2's lock")
                deadline = time.monotonic() + 10
                while not await watcher.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND query LIKE 'INSERT INTO leader_terms%'"):
                    assert time.monotonic() < deadline, "node2's claim never waited"
                    await asyncio.sleep(0.02)
                assert not new.is_leader  # elected, but not leading before the write ends
                assert new.term is None
                finish.set()
                assert await write == (True, 1)  # it began while leading: it commits
                await _until(lambda: new.is_leader, 10, "node2's term")
                assert new.term == 2
                assert not await _save(first, old, 1)  # and nothing after it
            finally:
                await watcher.close()
                await old.close()
                await new.close()
                await first.close()
                await second.close()

        asyncio.run(run())


# -- two in-process CA nodes ---------------------------------------------------------------


@contextlib.contextmanager
def _two_cas(tmp_path: Path, clock: FakeClock, dsn: str, extra: str = "", keys_extra: str = "",
             ) -> Iterator[tuple[CaHarness, CaHarness]]:
    """Two CA nodes on one database, each with its own copy of the key folder, passphrase
    and API token (two hosts: nothing shared but PostgreSQL, and the token when `keys_extra`
    puts the keys in one), on one FakeClock."""
    first = tmp_path / "node1"
    first.mkdir()
    config1 = init_ca(first, clock, database=dsn, node_name="node1", extra=extra,
                      keys_extra=keys_extra)
    second = tmp_path / "node2"
    second.mkdir()
    shutil.copytree(first / "var", second / "var")
    config2 = write_config(second, public_port=free_port(), internal_port=free_port(),
                           database=dsn, node_name="node2", extra=extra, keys_extra=keys_extra)
    node1 = start_ca(config1, clock)
    try:
        node2 = start_ca(config2, clock)
        try:
            yield node1, node2
        finally:
            node2.stop()
    finally:
        node1.stop()


def _leader_of(job: str, *nodes: CaHarness, seconds: float = 15) -> CaHarness:
    """The node leading `job` (bounded wait); exactly one leads."""
    deadline = time.monotonic() + seconds
    while True:
        leading = [node for node in nodes if node.runtime.leaders[job].is_leader]
        if leading:
            assert len(leading) == 1, f"{job}: two leaders"
            return leading[0]
        assert time.monotonic() < deadline, f"no {job} leader within {seconds} s"
        time.sleep(0.02)


def _wait(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what} not within {seconds} s"
        time.sleep(0.02)


def _ocsp_over_http(node: CaHarness, leaf: x509.Certificate) -> ocsp.OCSPResponse:
    request = ocsp.OCSPRequestBuilder().add_certificate(
        leaf, node.runtime.issuers.get("g1").certificate, hashes.SHA1(),  # noqa: S303 (CertID)
    ).build().public_bytes(serialization.Encoding.DER)
    http = urllib.request.Request(  # noqa: S310 - loopback
        f"{node.public_url}/ocsp", data=request,
        headers={"Content-Type": "application/ocsp-request"})
    with urllib.request.urlopen(http, timeout=10) as response:  # noqa: S310 - loopback
        return ocsp.load_der_ocsp_response(response.read())


def _signed_by(answer: ocsp.OCSPResponse, responder: x509.Certificate) -> bool:
    key = responder.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert answer.signature_hash_algorithm is not None
    try:
        key.verify(answer.signature, answer.tbs_response_bytes,
                   ec.ECDSA(answer.signature_hash_algorithm))
    except InvalidSignature:
        return False
    return True


def _recorder(node: CaHarness) -> CutoverRecorder:
    recorder = node.runtime.cutovers
    assert recorder is not None  # every node of a cluster has one
    return recorder


def _maintain_at_once(nodes: tuple[CaHarness, CaHarness]) -> list[list[str]]:
    """Both nodes' responder maintenance at the same moment (their minute ticks)."""
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda node: node.call(node.runtime.ocsp.maintain_responders()),
                             nodes))


def test_responder_renewed_once_by_the_leader_and_signed_with_everywhere(
        tmp_path: Path, clock: FakeClock, postgres_dsn: str) -> None:
    """Issue 13, "renewing responder certificates": only the leader renews; its certificate
    (and, for file keys, its encrypted key file: into the other node's own key folder; a
    token key is found in the shared token) reaches the other node through the store's
    NOTIFY, and both nodes' OCSP answers are signed by it without a restart. Due on both
    nodes' ticks at once, it is renewed once. The leader stopped, the next one renews the
    next time (term 2). Keys in files here; the token's path (a key replaced in the shared
    token, found again by its label) is in the next test, with both backends."""
    with _two_cas(tmp_path, clock, postgres_dsn) as nodes:
        leader = _leader_of(RESPONDER_JOB, *nodes)
        follower = nodes[1] if leader is nodes[0] else nodes[0]
        _, leaf_path = follower.issue_csr("500101", tmp_path)
        leaf = x509.load_pem_x509_certificate(leaf_path.read_bytes())
        first = follower.runtime.issuers.get("g1").ocsp_certificate
        assert _maintain_at_once(nodes) == [[], []]  # not due yet
        clock.advance(timedelta(days=61))
        # Only the leader's tick: the follower must get the renewal from the NOTIFY alone.
        assert leader.call(leader.runtime.ocsp.maintain_responders()) == ["g1"]
        renewed = leader.runtime.issuers.get("g1").ocsp_certificate
        assert renewed.serial_number != first.serial_number
        rows = leader.sql("SELECT generation, node, term FROM ocsp_responders")
        assert rows == [("g1", leader.config.node_name, 1)]
        _wait(lambda: follower.runtime.issuers.get("g1").ocsp_certificate.serial_number
              == renewed.serial_number, 10, "the follower's install")
        key_files = [node.config.keys.directory / "g1-ocsp.key.pem" for node in nodes]
        assert key_files[0].read_bytes() == key_files[1].read_bytes()
        assert {stat.S_IMODE(path.stat().st_mode) for path in key_files} == {0o600}
        [(key_pem,)] = leader.sql("SELECT key_pem FROM ocsp_responders")
        assert key_pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        for node in nodes:
            answer = _ocsp_over_http(node, leaf)
            assert answer.certificate_status == ocsp.OCSPCertStatus.GOOD
            assert answer.certificates[0].serial_number == renewed.serial_number
            assert _signed_by(answer, renewed)
            assert not _signed_by(answer, first)  # twin: the old responder did not sign it

        clock.advance(timedelta(days=61))  # due again, on both nodes' ticks at once
        results = _maintain_at_once(nodes)
        assert results[nodes.index(leader)] == ["g1"]
        assert results[nodes.index(follower)] == []
        [(count,)] = leader.sql("SELECT count(*) FROM audit_log"
                                " WHERE action = 'ocsp_responder.renewed'")
        assert count == 2
        _wait(lambda: follower.runtime.issuers.get("g1").ocsp_certificate.serial_number
              == leader.runtime.issuers.get("g1").ocsp_certificate.serial_number, 10,
              "the follower's second install")

        leader.stop()  # the leader goes; the survivor leads and renews the next time
        assert _leader_of(RESPONDER_JOB, follower) is follower
        clock.advance(timedelta(days=61))
        assert follower.call(follower.runtime.ocsp.maintain_responders()) == ["g1"]
        assert follower.sql("SELECT node, term FROM ocsp_responders ORDER BY issued_at") == [
            (leader.config.node_name, 1), (leader.config.node_name, 1),
            (follower.config.node_name, 2)]
        answer = _ocsp_over_http(follower, leaf)
        assert _signed_by(answer, follower.runtime.issuers.get("g1").ocsp_certificate)


@pytest.mark.key_backends
def test_responder_issued_but_not_published_is_signed_with_then_published(
        tmp_path: Path, clock: FakeClock, postgres_dsn: str, monkeypatch: pytest.MonkeyPatch,
        key_backend: str, request: pytest.FixtureRequest) -> None:
    """A crash in the middle: the leader issued the new responder (its key file replaced)
    but the publishing transaction failed. It signs with the responder it issued (the key
    it now holds, never the old certificate with the new key), and its next round publishes
    a renewal that the other node installs. R-KEY-1: files and a token (whose key labels
    the renewal swapped)."""
    keys_extra = key_backend_config(key_backend, tmp_path, request)
    with _two_cas(tmp_path, clock, postgres_dsn, keys_extra=keys_extra) as nodes:
        leader = _leader_of(RESPONDER_JOB, *nodes)
        follower = nodes[1] if leader is nodes[0] else nodes[0]
        first = leader.runtime.issuers.get("g1").ocsp_certificate
        _, leaf_path = leader.issue_csr("500201", tmp_path)
        leaf = x509.load_pem_x509_certificate(leaf_path.read_bytes())
        clock.advance(timedelta(days=61))
        real = PgStore.insert_responder

        async def lost_connection(*_args: object, **_kwargs: object) -> None:
            raise ConnectionResetError("the database went away")

        monkeypatch.setattr(PgStore, "insert_responder", lost_connection)
        with pytest.raises(Unavailable):  # the store names it: 503 store_unavailable
            leader.call(leader.runtime.ocsp.maintain_responders())
        assert leader.sql("SELECT count(*) FROM ocsp_responders") == [(0,)]
        unpublished = leader.runtime.issuers.get("g1").ocsp_certificate
        assert unpublished != first
        assert _signed_by(_ocsp_over_http(leader, leaf), unpublished)
        assert follower.runtime.issuers.get("g1").ocsp_certificate != unpublished

        monkeypatch.setattr(PgStore, "insert_responder", real)
        clock.advance(timedelta(days=61))
        assert leader.call(leader.runtime.ocsp.maintain_responders()) == ["g1"]
        [(key_pem,)] = leader.sql("SELECT key_pem FROM ocsp_responders")
        assert (key_pem is None) == (key_backend == "pkcs11")  # a token key stays in it
        published = leader.runtime.issuers.get("g1").ocsp_certificate
        _wait(lambda: follower.runtime.issuers.get("g1").ocsp_certificate == published, 10,
              "the follower's install")
        for node in nodes:
            assert _signed_by(_ocsp_over_http(node, leaf), published)


def test_forged_responder_publication_is_refused(tmp_path: Path, clock: FakeClock,
                                                 postgres_dsn: str) -> None:
    """Whoever can write the database cannot make a node sign with a responder of their own:
    a published certificate must be an OCSP signing certificate issued by the generation's
    issuer whose key this node can open. A customer certificate of ours, and a self-made
    OCSP certificate, each published as the newest responder, are refused; the node keeps
    signing with its responder."""
    with _two_cas(tmp_path, clock, postgres_dsn) as nodes:
        node = nodes[0]
        before = node.runtime.issuers.get("g1").ocsp_certificate
        _, leaf_path = node.issue_csr("500301", tmp_path)
        leaf = x509.load_pem_x509_certificate(leaf_path.read_bytes())
        forger_key = ec.generate_private_key(ec.SECP256R1())
        self_made = (
            x509.CertificateBuilder().subject_name(before.subject).issuer_name(before.issuer)
            .public_key(forger_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(clock.now()).not_valid_after(clock.now() + timedelta(days=365))
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.OCSP_SIGNING]),
                           critical=False)
            .sign(forger_key, hashes.SHA256()))
        forged_pem = forger_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"the forger's passphrase"))
        for number, (certificate, key_pem) in enumerate(
                ((leaf, None), (self_made, forged_pem), (self_made, None)), start=1):
            node.sql("INSERT INTO ocsp_responders (generation, serial, certificate, key_pem,"
                     " not_after, issued_at, node, term) VALUES ('g1', ?, ?, ?, ?, ?, 'x', 9)",
                     f"f{number}", certificate.public_bytes(serialization.Encoding.DER),
                     key_pem, int((clock.now() + timedelta(days=400 + number)).timestamp()),
                     int(clock.now().timestamp()))
            assert node.call(node.runtime.ocsp.install_published()) == []
            assert node.runtime.issuers.get("g1").ocsp_certificate == before
            assert _signed_by(_ocsp_over_http(node, leaf), before)
        key_file = node.config.keys.directory / "g1-ocsp.key.pem"
        assert key_file.read_bytes() != forged_pem


def test_cutover_recorded_once_and_by_the_next_leader(
        tmp_path: Path, clock: FakeClock, postgres_dsn: str) -> None:
    """Issue 13, "campaign cutovers" (R-CUT-1): when a cutover's date passes, it is recorded
    once across the cluster (one `cutover.effective` audit entry with the affected count),
    even when both nodes tick at once; a cutover whose date passes while its leader is gone
    is recorded by the next leader as soon as it is elected."""
    start = clock.now()
    extra = f"""
        [[cutover]]
        name = "first"
        issued_before = {(start + timedelta(days=1)).isoformat()}
        effective_at = {(start + timedelta(days=10)).isoformat()}
        [[cutover]]
        name = "second"
        issued_before = {(start + timedelta(days=1)).isoformat()}
        effective_at = {(start + timedelta(days=20)).isoformat()}
    """
    with _two_cas(tmp_path, clock, postgres_dsn, extra=extra) as nodes:
        for user_id in ("600001", "600002", "600003"):
            status, _ = nodes[0].acquire(user_id, nodes[0].acquisition_password(user_id))
            assert status == 201
        leader = _leader_of(CUTOVER_JOB, *nodes)
        assert [node.call(_recorder(node).tick()) for node in nodes] == [[], []]
        clock.set(start + timedelta(days=10, seconds=1))
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda node: node.call(_recorder(node).tick()),
                                    nodes))
        assert results[nodes.index(leader)] == ["first"]
        assert sorted(results) == [[], ["first"]]
        assert leader.sql("SELECT cutover, affected, node, term FROM cutover_effects") == [
            ("first", 3, leader.config.node_name, 1)]

        follower = nodes[1] if leader is nodes[0] else nodes[0]
        leader.stop()  # gone before the second cutover's date passes
        clock.set(start + timedelta(days=20, seconds=1))
        _wait(lambda: len(follower.sql("SELECT 1 FROM cutover_effects")) == 2, 15,
              "the next leader's record")
        assert follower.sql(
            "SELECT cutover, affected, node, term FROM cutover_effects ORDER BY cutover") == [
            ("first", 3, leader.config.node_name, 1), ("second", 3, follower.config.node_name, 2)]
        rows = follower.sql("SELECT subject, details FROM audit_log"
                            " WHERE action = 'cutover.effective' ORDER BY id")
        assert [subject for subject, _ in rows] == ["first", "second"]
        assert all('"affected": 3' in str(details) for _, details in rows)
        assert follower.call(_recorder(follower).tick()) == []  # never twice
        assert follower.cli("audit", "verify") == 0


# -- network drop to the database, real daemons ----------------------------------------------


def _leaders(dsn: str) -> dict[str, str | None]:
    """job -> the node holding its leader lock now (as `cluster status` finds it)."""

    async def ask() -> dict[str, str | None]:
        conn = await asyncpg.connect(dsn)
        try:
            holders = {job: await current_leader(conn, job) for job in JOBS}
        finally:
            await conn.close()
        return {job: None if holder is None else holder[1].rsplit(":", 1)[-1]
                for job, holder in holders.items()}

    return asyncio.run(ask())


@contextlib.contextmanager
def _node1_leading_then_node2(config1: Path, config2: Path, dsn: str,
                              ) -> Iterator[tuple[Daemons, Daemons]]:
    """Node 1 started and leading every job, then node 2 started beside it."""
    with launched(config1, "ca", "--config", str(config1), "serve") as node1:
        node1.wait_internal_api()
        _wait(lambda: set(_leaders(dsn).values()) == {"node1"}, 15, "node 1 leading every job")
        with launched(config2, "ca", "--config", str(config2), "serve") as node2:
            node2.wait_internal_api()
            yield node1, node2


def _gauges(node: Daemons) -> dict[str, str]:
    with urllib.request.urlopen(public_url(node) + "/metrics", timeout=10) as response:  # noqa: S310 - loopback
        text = response.read().decode()
    return dict(re.findall(r'^sekisho_ca_leader\{job="([^"]+)",node="[^"]+"\} (\S+)$', text,
                           re.MULTILINE))


def _served_crl(node: Daemons) -> tuple[int, bytes]:
    with urllib.request.urlopen(public_url(node) + "/crl/g1.crl", timeout=10) as response:  # noqa: S310 - loopback
        der = response.read()
    crl = x509.load_der_x509_crl(der)
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number, der


def test_network_drop_to_the_database_moves_every_leader_job(
        tmp_path: Path, postgres_cluster: LocalCluster, postgres_dsn: str) -> None:
    """Issue 13, "leader loss (... network drop to the database) -> a new leader within ~5 s":
    node 1 leads every job and reaches PostgreSQL through a proxy; the proxy stops forwarding
    (no FIN: a pulled cable). Node 2 leads every job within a bounded wait (the server ends
    node 1's lock sessions after their idle_session_timeout, 4 s), with a new term; node 1
    steps down on its own (its /metrics says 0 for every job, its heartbeat failed). When the
    network is back, node 1 stays a follower (no new term), both serve node 2's CRL, and
    `cluster status` names node 2 as every job's leader with its term."""
    config1, config2 = cluster_configs(tmp_path, postgres_dsn)
    proxy = SocketProxy(postgres_cluster.socket,
                        Path(tempfile.mkdtemp(prefix="sekisho-proxy-"))).start()
    try:
        proxied = postgres_dsn.replace(quote(str(postgres_cluster.folder), safe="/"),
                                       quote(str(proxy.folder), safe="/"))
        assert proxied != postgres_dsn
        config1.write_text(config1.read_text().replace(postgres_dsn, proxied))
        with _node1_leading_then_node2(config1, config2, postgres_dsn) as (node1, node2):
            assert _gauges(node1) == dict.fromkeys(JOBS, "1.0")
            assert _gauges(node2) == dict.fromkeys(JOBS, "0.0")
            user = "800001"
            status, body = node2.internal_api(
                "POST", f"/v1/users/{user}/acquisition-password", {})
            assert status == 201, body
            status, body = node2.internal_api("POST", "/v1/acquire", {
                "user_id": user, "acquisition_password": body["acquisition_password"]})
            assert status == 201, body
            serial = body["serial"]

            proxy.drop()
            dropped = time.monotonic()
            _wait(lambda: set(_leaders(postgres_dsn).values()) == {"node2"}, 20,
                  "node 2 leading every job")
            failover = time.monotonic() - dropped
            _wait(lambda: _gauges(node2) == dict.fromkeys(JOBS, "1.0"), 10,
                  "node 2's terms")
            _wait(lambda: _gauges(node1) == dict.fromkeys(JOBS, "0.0"), 10,
                  "node 1 stepping down")
            print(f"network drop -> every job led by node 2 after {failover:.1f} s")
            terms = _terms(postgres_dsn)
            assert terms == dict.fromkeys(JOBS, (2, "node2"))

            status, body = node2.internal_api("POST", "/v1/revoke",
                                              {"serial": serial, "reason": "superseded"})
            assert status == 200, body
            proxy.restore()
            _wait(lambda: int(serial, 16) in {
                entry.serial_number for entry in x509.load_der_x509_crl(
                    _served_crl(node1)[1])}, 30, "node 1 serving the new CRL")
            assert _served_crl(node1) == _served_crl(node2)  # one number, one CRL
            assert _gauges(node1) == dict.fromkeys(JOBS, "0.0")
            assert _terms(postgres_dsn) == terms  # node 1 never claimed again
            assert set(_leaders(postgres_dsn).values()) == {"node2"}
            status_out = subprocess.run(
                [sys.executable, "-m", "ca", "--config", str(config1), "cluster", "status"],
                cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
            assert status_out.returncode == 0, status_out.stdout + status_out.stderr
            assert "nodes:       node1, node2" in status_out.stdout
            assert "CRL leader:  node2" in status_out.stdout
            for job in JOBS:
                assert re.search(rf"^  {job} +node2 \(term 2\)$", status_out.stdout,
                                 re.MULTILINE), status_out.stdout
    finally:
        proxy.close()
        shutil.rmtree(proxy.folder, ignore_errors=True)


def _terms(dsn: str) -> dict[str, tuple[int, str]]:
    async def ask() -> dict[str, tuple[int, str]]:
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch("SELECT job, term, node FROM leader_terms")
        finally:
            await conn.close()
        return {str(row[0]): (int(row[1]), str(row[2])) for row in rows}

    return asyncio.run(ask())


def test_kill_9_of_the_leader_moves_every_leader_job(tmp_path: Path, postgres_dsn: str,
                                                     ) -> None:
    """Issue 13, "leader loss (kill -9 ...) -> a new leader within ~5 s": node 1 leads every
    job; kill -9 of its process -> node 2 leads every job (the server ends the dead
    sessions at once), each with term 2, visible in its /metrics."""
    config1, config2 = cluster_configs(tmp_path, postgres_dsn)
    with _node1_leading_then_node2(config1, config2, postgres_dsn) as (node1, node2):
        assert _gauges(node2) == dict.fromkeys(JOBS, "0.0")
        os.kill(node1.process.pid, signal.SIGKILL)
        killed = time.monotonic()
        node1.process.wait(10)
        _wait(lambda: _gauges(node2) == dict.fromkeys(JOBS, "1.0"), 20,
              "node 2 leading every job")
        print(f"kill -9 -> every job led by node 2 after {time.monotonic() - killed:.2f} s")
        assert set(_leaders(postgres_dsn).values()) == {"node2"}
        assert _terms(postgres_dsn) == dict.fromkeys(JOBS, (2, "node2"))
