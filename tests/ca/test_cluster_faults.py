"""Issue 13's proof with real processes: two CA nodes (`sekisho-ca serve`) on one real
PostgreSQL database, one gateway (`sekisho-gateway serve`) on node 1, and a kill -9 of node 1
in the middle of a 500-acquisition burst.

What must hold afterwards (tests/support/faults.check_invariants, on each node): every
PKCS#12 a client received is stored with its DER, no serial twice, no user stuck (an
interrupted user acquires after the restart, or holds the certificate the kill kept from
them), node 2 kept issuing while node 1 was down, `sekisho-ca audit verify` passes on
PostgreSQL, and both nodes serve the same CRL (one number, the store's revoked serials) and
answer OCSP as the store says. The gateway stays consistent: every download page it showed
was downloaded (no pickup left behind) and a user who acquired through it logs in.

And a node that dies and stays down: its users' unfinished acquisitions (an intent, a counted
try) are settled by the surviving node, which sees that the dead node has no session left in
the database, instead of blocking those users until the request deadline.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import sqlite3
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from ca.store_pg import PgStore
from common.passwords import PasswordHasher
from common.postgres import PostgresSettings
from common.sqlite import Owner
from gateway.auth import Authenticator
from gateway.users import UserStore
from policy.clock import SystemClock
from policy.password import PasswordPolicy
from tests.gateway.conftest import (
    GOOD_PASSWORD,
    Browser,
    Enrolled,
    Page,
    csrf_of,
    write_client_pem,
)
from tests.support.ca_cluster import cluster_configs, cluster_node, pin_internal_tls
from tests.support.faults import CaProcess, certificate_of, check_invariants, http
from tests.support.processes import Daemons, launched

ACQUISITIONS = 500
THROUGH_GATEWAY = 20  # of the 500: the gateway's acquisition form (it follows node 1)
PASSWORD = "cluster-burst-acquisition-1"  # every user's acquisition password (one hash)
# Node 1 issues half the direct acquisitions and the gateway's: it is killed -9 at its
# half-way issuance, paused right after that certificate's commit (common.faults), so one
# certificate is always stored with its answer never sent (R-CERT-3's hard case).
KILL_AT = ((ACQUISITIONS - THROUGH_GATEWAY) // 2 + THROUGH_GATEWAY) // 2
KILL_FAULT = f"ca.after_issued:pause:{KILL_AT}"
WHILE_DOWN = 40  # deliveries by node 2 while node 1 is down, before node 1 restarts
API_CLIENTS_PER_NODE = 6
GATEWAY_CLIENTS = 3
BURST_SECONDS = 150  # a bound on the whole burst (a hung burst fails, never hangs)


@dataclass
class Burst:
    """What the clients saw: user -> (serial, certificate DER) for every delivered PKCS#12."""

    delivered: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    by_node: dict[str, int] = field(default_factory=lambda: {"node1": 0, "node2": 0,
                                                             "gateway": 0})
    answer_lost: set[str] = field(default_factory=set)  # 409 usable_certificate_exists
    interrupted: set[str] = field(default_factory=set)  # a try died with node 1 (or 503)
    refused: dict[str, object] = field(default_factory=dict)  # anything else: a failure
    revoked: set[str] = field(default_factory=set)
    retried: Counter[int | str] = field(default_factory=Counter)  # why tries were repeated
    enrolled: dict[str, Enrolled] = field(default_factory=dict)  # through the gateway
    node1_down: bool = False
    node1_killed: bool = False  # set at the kill, stays set after the restart
    node2_left: int = 0  # users node 2's clients had not started when node 1 was killed
    node2_while_down: int = 0
    downtime: float = 0.0
    seconds: float = 0.0


def _seed(dsn: str, users: list[str]) -> None:
    """An acquisition password for every user, stored as the officer's would be (one
    argon2 hash of PASSWORD shared: 500 hashes would cost seconds and prove nothing)."""
    hasher = PasswordHasher()
    digest = asyncio.run(hasher.hash(PASSWORD))
    hasher.close()
    now = int(time.time())

    async def insert() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.executemany(
                "INSERT INTO acquisition_secrets (user_id, password_hash, failed_attempts,"
                " locked, issued_at, updated_at) VALUES ($1, $2, 0, 0, $3, $3)",
                [(user, digest, now) for user in users])
        finally:
            await conn.close()

    asyncio.run(insert())


def _add_gateway_users(database: Path, users: list[str]) -> None:
    """The helpdesk creates each user and the user sets GOOD_PASSWORD (the gateway's own
    store, in-process, before the gateway starts; a cheap argon2 for the set-up)."""

    async def add() -> None:
        store = await UserStore.open(database, SystemClock())
        hasher = PasswordHasher(time_cost=1, memory_cost_kib=1024)
        try:
            auth = Authenticator(store, hasher, PasswordPolicy(), clock=SystemClock())
            for user in users:
                _, temporary = await auth.add_user(user, name="Tanaka Taro", customer="ABC",
                                                   role="contractor", actor="helpdesk:test")
                result = await auth.change_password(user, temporary, GOOD_PASSWORD)
                assert result.status.value == "changed", result
        finally:
            await store.close()
            hasher.close()

    asyncio.run(add())


def _certificate(data: bytes) -> x509.Certificate:
    _, cert, _ = pkcs12.load_key_and_certificates(data, PASSWORD.encode())
    assert cert is not None
    return cert


async def _api_client(node: CaProcess, users: list[str], burst: Burst,
                      session: aiohttp.ClientSession) -> None:
    """As the gateway calls the CA (gateway/ca_client.py): a ticket for the acquisition
    password, then the acquisition with it. A try that dies (connection refused or cut, a
    503) is retried on the same node from the ticket, as a gateway that follows one CA URL
    does when its customer submits the form again; any other answer is final."""
    headers = {"Authorization": f"Bearer {node.token}"}
    request = {"user_id": "", "acquisition_password": PASSWORD, "actor": "gateway"}

    async def post(path: str, body: dict[str, str]) -> tuple[int, dict[str, object]]:
        async with session.post(node.internal_url + path, json=body, headers=headers,
                                ssl=node.internal_tls) as response:
            return response.status, await response.json()

    deadline = time.monotonic() + BURST_SECONDS
    while users:
        if node.name == "node2" and not burst.node1_killed and len(users) <= WHILE_DOWN:
            # Node 2 keeps WHILE_DOWN users for after node 1's death, however fast it ran
            # ahead: the proof is that it keeps issuing while node 1 is down.
            assert time.monotonic() < deadline, "node 1 was never killed"
            await asyncio.sleep(0.02)
            continue
        user = users.pop()
        request["user_id"] = user
        while True:
            try:
                status, body = await post("/v1/acquisition-tickets", request)
                if status == 201:
                    status, body = await post("/v1/acquire", {**request,
                                                              "ticket": str(body["ticket"])})
            except (TimeoutError, aiohttp.ClientError):
                status, body = 0, {}
            if status == 201:
                cert = _certificate(base64.b64decode(str(body["pkcs12"])))
                assert format(cert.serial_number, "x") == body["serial"]
                burst.delivered[user] = (str(body["serial"]),
                                         cert.public_bytes(serialization.Encoding.DER))
                burst.by_node[node.name] += 1
                if burst.node1_down and node.name == "node2":
                    burst.node2_while_down += 1
                break
            if status == 409 and body.get("error") == "usable_certificate_exists":
                burst.answer_lost.add(user)  # stored, its answer died with node 1 (R-CERT-3)
                break
            if status in (0, 503):  # node 1 is down or its connection was cut
                burst.interrupted.add(user)
                burst.retried[status] += 1
                await asyncio.sleep(0.1)
                continue
            burst.refused[user] = (status, body)  # 401, 429, 500...: a failure
            break


async def _gateway_client(url: str, server_cert: Path, users: list[str], burst: Burst,
                          clients: Path) -> None:
    """The customer's acquisition form on the gateway (§2.1, real HTTPS): the form, the
    download page, the download. The gateway users arrive spread over the whole burst (one
    per ACQUISITIONS / THROUGH_GATEWAY deliveries), so some meet node 1's death; the "CA
    unavailable" page (503) is submitted again after a moment."""
    context = ssl.create_default_context(cafile=str(server_cert))
    deadline = time.monotonic() + BURST_SECONDS
    while users:
        user = users.pop()
        arrival = (THROUGH_GATEWAY - len(users) - 1) * (ACQUISITIONS // THROUGH_GATEWAY)
        while len(burst.delivered) < arrival:
            assert time.monotonic() < deadline, f"the burst stopped before {arrival}"
            await asyncio.sleep(0.02)
        while True:
            async with Browser(url, context, None) as browser:
                with contextlib.suppress(TimeoutError, aiohttp.ClientError):
                    ready = await browser.submit("/auth/acquire", "/auth/acquire", {
                        "user_id": user, "password": GOOD_PASSWORD,
                        "acquisition_password": PASSWORD})
                    if ready.url == url + "/auth/download" and 'id="download"' in ready.text:
                        page = await browser.request("POST", "/auth/download",
                                                     data={"csrf": csrf_of(ready.text)})
                        assert page.status == 200, (page.status, page.error)
                        assert page.headers["Content-Type"] == "application/x-pkcs12"
                        key, cert, _ = pkcs12.load_key_and_certificates(
                            page.body, PASSWORD.encode())
                        assert key is not None and cert is not None
                        burst.enrolled[user] = write_client_pem(clients, user, GOOD_PASSWORD,
                                                                cert, key)
                        burst.delivered[user] = (format(cert.serial_number, "x"),
                                                 cert.public_bytes(serialization.Encoding.DER))
                        burst.by_node["gateway"] += 1
                        break
                    if ready.error == "usable_certificate_exists":
                        burst.answer_lost.add(user)
                        break
                    if ready.status != 503:  # the gateway's "CA unavailable" page
                        burst.refused[user] = (ready.status, ready.error)
                        break
                burst.interrupted.add(user)
                burst.retried["gateway"] += 1
            await asyncio.sleep(0.2)


async def _revoker(nodes: tuple[CaProcess, CaProcess], burst: Burst) -> None:
    """Revokes every 25th delivered certificate while the burst runs, alternately through
    each node (through node 2 while node 1 is down): the CRL and OCSP have work to agree on
    across the kill and the CRL leader may change hands."""
    turn = 0
    while True:
        await asyncio.sleep(0.2)
        due = len(burst.delivered) // 25 - len(burst.revoked)
        candidates = [serial for serial, _ in list(burst.delivered.values())
                      if serial not in burst.revoked][:due]
        for serial in candidates:
            node = nodes[1] if burst.node1_down else nodes[turn % 2]
            turn += 1
            try:
                answer = await asyncio.to_thread(node.api, "POST", "/v1/revoke",
                                                 {"serial": serial, "reason": "keyCompromise"})
            except OSError:  # node 1 died under the call: committed or not, the store says
                continue
            assert answer.status == 200, answer
            burst.revoked.add(serial)


async def _killer(node1: CaProcess, node2_queue: list[str], burst: Burst) -> None:
    """kill -9 of node 1 at its KILL_AT-th issuance (paused after the commit); start it
    again once node 2 has delivered WHILE_DOWN more, or all it had left (bounded waits)."""
    deadline = time.monotonic() + BURST_SECONDS
    await asyncio.to_thread(node1.wait_fault, BURST_SECONDS)
    killed = time.monotonic()
    await asyncio.to_thread(node1.kill9)  # SIGKILL, then its orphaned key workers
    burst.node1_down = burst.node1_killed = True
    burst.node2_left = len(node2_queue)  # not yet taken by a client: at least these remain
    while burst.node2_while_down < min(WHILE_DOWN, burst.node2_left):
        assert time.monotonic() < deadline, "node 2 stopped issuing while node 1 was down"
        await asyncio.sleep(0.05)
    node1.start(wait=False)
    await asyncio.to_thread(node1.wait_healthy, 60)
    burst.node1_down = False
    burst.downtime = time.monotonic() - killed


async def _run_burst(nodes: tuple[CaProcess, CaProcess], gateway_url: str, server_cert: Path,
                     users: list[str], clients: Path) -> Burst:
    burst = Burst()
    through_gateway = users[:THROUGH_GATEWAY]
    direct = users[THROUGH_GATEWAY:]
    queues = {node.name: [u for i, u in enumerate(direct) if i % 2 == n]
              for n, node in enumerate(nodes)}
    for queue in (*queues.values(), through_gateway):
        random.shuffle(queue)
    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        revoker = asyncio.create_task(_revoker(nodes, burst))
        work = asyncio.gather(
            _killer(nodes[0], queues["node2"], burst),
            *(_api_client(node, queues[node.name], burst, session)
              for node in nodes for _ in range(API_CLIENTS_PER_NODE)),
            *(_gateway_client(gateway_url, server_cert, through_gateway, burst, clients)
              for _ in range(GATEWAY_CLIENTS)))
        try:
            await asyncio.wait_for(work, BURST_SECONDS)
        except TimeoutError:
            raise AssertionError(
                f"the burst did not finish: {len(burst.delivered)} delivered, {burst.by_node},"
                f" tries repeated {dict(burst.retried)}, node 1 down: {burst.node1_down},"
                f" left: { {name: len(queue) for name, queue in queues.items()} }"
                f" gateway {len(through_gateway)}; logs:\n"
                + "\n".join(node.log_text()[-3000:] for node in nodes)) from None
        finally:
            revoker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await revoker
    burst.seconds = time.monotonic() - started
    return burst


@pytest.fixture
def cluster(tmp_path: Path, postgres_dsn: str,
            ) -> Iterator[tuple[CaProcess, CaProcess, Daemons, list[str]]]:
    """Two CA nodes on one PostgreSQL database (node 1 with KILL_FAULT armed), ACQUISITIONS
    users with an acquisition password, the first THROUGH_GATEWAY of them gateway users too,
    and the gateway (its CA URLs point at node 1); everything killed afterwards."""
    config1, config2 = cluster_configs(tmp_path, postgres_dsn)
    config1.write_text(config1.read_text().replace(
        "[gateway]\n", "[gateway]\nacquire_attempts_per_address = 10000\n"))
    users = [f"9{index:05d}" for index in range(ACQUISITIONS)]
    node1, node2 = cluster_node(config1, postgres_dsn), cluster_node(config2, postgres_dsn)
    try:
        node1.start(fault=KILL_FAULT)
        pin_internal_tls(node1)
        node2.start()
        pin_internal_tls(node2)
        _seed(postgres_dsn, users)
        _add_gateway_users(tmp_path / "var" / "gateway" / "gateway.sqlite3",
                           users[:THROUGH_GATEWAY])
        with launched(config1, "gateway", "--config", str(config1), "serve",
                      ready=b"gateway listening on") as gateway:
            yield node1, node2, gateway, users
    finally:
        node1.kill9()
        node2.kill9()


def _served_crl(node: CaProcess) -> x509.CertificateRevocationList:
    answer = http("GET", node.public_url + "/crl/g1.crl")
    assert answer.status == 200, answer
    return x509.load_der_x509_crl(answer.body)


def test_burst_over_two_nodes_with_node1_killed_halfway(
        cluster: tuple[CaProcess, CaProcess, Daemons, list[str]], tmp_path: Path) -> None:
    """500 acquisitions over both nodes (240 at each node's internal API as the gateway
    calls it, 20 through the gateway's form), node 1 killed -9 at its 130th issuance (right
    after that certificate's commit, before its answer) and started again once node 2
    delivered 40 more, revocations through both nodes meanwhile.
    Then: every user holds a certificate the store has (delivered, or stored with its answer
    lost), nothing refused, each node's invariants, one CRL, and the gateway consistent."""
    node1, node2, gateway, users = cluster
    host, port = gateway.address("listen")
    gateway_url = f"https://{host}:{port}"
    server_cert = tmp_path / "var" / "gateway" / "tls" / "server.crt.pem"
    assert "CRL leader:  node1" in node2.cli("cluster", "status").stdout  # the one killed
    burst = asyncio.run(_run_burst((node1, node2), gateway_url, server_cert, list(users),
                                   tmp_path / "clients"))
    print(f"\n500-acquisition burst over 2 nodes: {burst.seconds:.1f} s, by node {burst.by_node},"
          f" node 1 down {burst.downtime:.1f} s (node 2 delivered {burst.node2_while_down}"
          f" meanwhile), interrupted users {len(burst.interrupted)}, answers lost"
          f" {len(burst.answer_lost)}, revoked {len(burst.revoked)}, tries repeated"
          f" {dict(burst.retried)}")

    assert not burst.refused, burst.refused
    assert burst.answer_lost, "the paused certificate's user was not told it exists"
    assert set(burst.delivered) | burst.answer_lost == set(users)
    assert burst.node2_while_down >= min(WHILE_DOWN, burst.node2_left) > 0
    assert burst.by_node["node1"] and burst.by_node["gateway"]
    serials = [serial for serial, _ in burst.delivered.values()]
    assert len(set(serials)) == len(serials), "a serial was delivered twice"

    # The interrupted users (and those whose answer the kill took) are probed once more:
    # each gets a certificate now or is shown the one stored for it, never 429 or a 5xx.
    delivered = {serial: der for serial, der in burst.delivered.values()
                 if serial not in burst.revoked}
    probe = dict.fromkeys(sorted(burst.interrupted | burst.answer_lost)[:40] + users[-5:],
                          PASSWORD)
    check_invariants(node2, delivered)
    counts = check_invariants(node1, delivered, probe)
    print(f"after the restart: {counts['abandoned']} intents of the killed run abandoned,"
          f" {len(probe)} users probed, {counts['stuck']} stuck")
    stored_users = {user for (user,) in node1.rows(
        "SELECT user_id FROM certificates WHERE state = 'issued'")}
    assert stored_users >= set(users)
    stored_revoked = {serial for (serial,) in node1.rows(
        "SELECT serial FROM certificates WHERE revoked_at IS NOT NULL")}
    assert stored_revoked >= burst.revoked

    # One CRL, whoever serves it: the same number and the same entries (= the store's).
    crl1, crl2 = _served_crl(node1), _served_crl(node2)
    number = crl1.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert crl2.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == number
    assert crl1.public_bytes(serialization.Encoding.DER) \
        == crl2.public_bytes(serialization.Encoding.DER)
    assert {format(entry.serial_number, "x") for entry in crl1} == stored_revoked
    assert node1.rows("SELECT crl_number FROM crl_state WHERE generation = 'g1'") == [(number,)]

    assert "CRL leader:  node2" in node1.cli("cluster", "status").stdout

    # The gateway: no pickup left behind, and a user who acquired through it logs in.
    with contextlib.closing(sqlite3.connect(
            tmp_path / "var" / "gateway" / "gateway.sqlite3")) as db:
        assert db.execute("SELECT COUNT(*) FROM pickups").fetchone() == (0,)
    who = next(enrolled for user, enrolled in burst.enrolled.items()
               if burst.delivered[user][0] not in burst.revoked)

    async def login() -> Page:
        context = ssl.create_default_context(cafile=str(server_cert))
        context.load_cert_chain(who.cert_file, who.key_file)
        async with Browser(gateway_url, context, who) as browser:
            form = await browser.get("/auth/login")
            assert form.status == 200, (form.status, form.error)
            return await browser.request("POST", "/auth/login", allow_redirects=False, data={
                "csrf": csrf_of(form.text), "password": who.password})

    page = asyncio.run(login())
    assert page.status == 303, (page.status, page.error)
    assert "/auth/" not in page.headers["Location"], page.headers["Location"]


@pytest.fixture
def node_pair(tmp_path: Path, postgres_dsn: str) -> Iterator[tuple[CaProcess, CaProcess]]:
    """Two CA nodes on one PostgreSQL database, not started; killed afterwards."""
    config1, config2 = cluster_configs(tmp_path, postgres_dsn)
    nodes = cluster_node(config1, postgres_dsn), cluster_node(config2, postgres_dsn)
    try:
        yield nodes
    finally:
        for node in nodes:
            node.kill9()


@pytest.mark.parametrize(("moment", "earlier_failures", "expected"), [
    ("ca.after_intent", 0, (201, None)),
    ("ca.after_attempt_counted", 2, (423, "acquisition_locked")),
])
def test_a_dead_nodes_unfinished_acquisition_does_not_block_its_user_on_the_other_node(
        node_pair: tuple[CaProcess, CaProcess], moment: str, earlier_failures: int,
        expected: tuple[int, str | None]) -> None:
    """kill -9 of node 1 while a user's acquisition is at `moment`, and node 1 stays down;
    the user, sent to node 2 (as a gateway following several CA URLs would), gets within
    seconds what node 1's own restart would have given: node 2's recovery sees that node 1
    has no session left in the database and settles its reservations. An intent recorded
    by the dead node is abandoned, so the user acquires (it used to be refused with 409
    usable_certificate_exists, naming a certificate never issued, for the whole request
    deadline: 10 minutes); a counted try of the dead node counts as a failure, so after two
    earlier failures the password is locked (423) and the officer's new one works (it used
    to be 429 busy for 10 minutes). Every invariant holds on node 2."""
    node1, node2 = node_pair
    node1.start(fault=f"{moment}::{earlier_failures + 1}")
    pin_internal_tls(node1)
    node2.start()
    pin_internal_tls(node2)
    password = node2.acquisition_password("950001")
    for _ in range(earlier_failures):
        assert node1.acquire("950001", "wrong-password-1").status == 401

    def doomed() -> None:  # its connection dies with node 1
        with contextlib.suppress(OSError):
            node1.acquire("950001", password)

    thread = threading.Thread(target=doomed, daemon=True)
    thread.start()
    node1.wait_fault()
    node1.kill9()
    thread.join(30)
    deadline = time.monotonic() + 30  # a bound on the wait: node 2 recovers every 2 s
    while ((answer := node2.acquire("950001", password)).status, answer.error) != expected:
        assert (answer.status, answer.error) in {(409, "usable_certificate_exists"),
                                                 (429, "busy")}, answer
        assert time.monotonic() < deadline, f"user still refused by node 2: {answer}"
        time.sleep(0.5)
    if answer.status == 423:
        password = node2.acquisition_password("950001")  # the officer issues a new one
        answer = node2.acquire("950001", password)
        assert answer.status == 201, answer
    serial = answer.body["serial"]
    der = certificate_of(answer, password).public_bytes(serialization.Encoding.DER)
    others = node2.rows("SELECT state FROM certificates WHERE user_id = '950001'"
                        " AND serial != ?", (serial,))
    assert others == ([("abandoned",)] if moment == "ca.after_intent" else [])
    check_invariants(node2, {serial: der})


def test_only_a_disconnected_nodes_daemon_reservations_are_settled_early(
        postgres_dsn: str) -> None:
    """Store level: node 2's recovery pass settles, before their deadline, the intent and
    the counted try of node 3's daemon (node 3 has no session in the database), never those
    of node 1's daemon (connected) nor those of an officer's CLI (its intents wait for their
    deadline, as before)."""
    now = datetime.now(UTC).replace(microsecond=0)
    owners = {"dead": Owner("ca-daemon@node3", "run"), "live": Owner("ca-daemon@node1", "run"),
              "cli": Owner("ca-cli@node3", "run")}

    async def run() -> tuple[list[tuple[str, str]], list[str]]:
        node1, node2 = [await PgStore.open(PostgresSettings(
            dsn=postgres_dsn, application_name=f"sekisho-ca:{name}"))
            for name in ("node1", "node2")]
        try:
            for name, owner in owners.items():
                await node1.reserve(
                    serial=f"{len(name):x}{name.encode().hex()}", user_id=f"96{len(name)}{name}",
                    generation="g1", kind="csr", not_before=now,
                    not_after=now + timedelta(days=1), now=now, check=lambda _rows: None,
                    actor="test", owner=owner.id, deadline=now + timedelta(minutes=10))
                await node1.set_acquisition_secret(f"97{name}", "hash", now, "test")
                assert await node1.reserve_acquisition_attempt(
                    f"97{name}", 3, now=now, deadline=now + timedelta(minutes=10),
                    owner=owner) == "reserved"
            me = Owner("ca-daemon@node2", "run")
            return (await node2.reconcile_intents(now, me),
                    await node2.expire_acquisition_attempts(now, 3, me))
        finally:
            await node1.close()
            await node2.close()

    intents, tries = asyncio.run(run())
    assert [user for _, user in intents] == ["964dead"]
    assert tries == ["97dead"]
