"""The store under pressure (R-FAULT-4, R-FAULT-5): a bulk officer revocation beside live
traffic, a write lock held by another process, a full disk (a real small tmpfs) and a
read-only file system (a real read-only bind mount), all against the real CA daemon."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from common.errors import Unavailable
from common.passwords import PasswordHasher
from gateway.auth import Authenticator
from gateway.users import UserStore
from policy.clock import SystemClock
from policy.password import PasswordPolicy
from tests.support.faults import (
    Answer,
    CaProcess,
    ca_command,
    certificate_of,
    check_invariants,
    http,
    ocsp_status,
)

BULK_CERTIFICATES = 6000


def _seed_issued(database: Path, count: int) -> None:
    """`count` issued certificate rows, as years of issuance would leave them (no DER: the
    bulk path only needs the rows)."""
    now = int(datetime.now(UTC).timestamp())
    with contextlib.closing(sqlite3.connect(database)) as db, db:
        db.executemany(
            "INSERT INTO certificates (serial, user_id, generation, kind, state, not_before,"
            " not_after, created_at) VALUES (?, ?, 'g1', 'csr', 'issued', ?, ?, ?)",
            [(format(secrets.randbits(150) | 1 << 150, "x"), f"9{i:05d}", now - 86400 * 30,
              now + 86400 * 300, now - 86400 * 30) for i in range(count)],
        )


def _der(answer: Answer, password: str) -> bytes:
    return certificate_of(answer, password).public_bytes(serialization.Encoding.DER)


def _is_ok_or_named_busy(answer: Answer) -> bool:
    if answer.status < 500:
        return True
    return (answer.status == 503 and answer.error == "store_busy"
            and "Retry-After" in answer.headers)


class TestBulkRevocation:
    """R-FAULT-4: a bulk revocation commits in bounded batches beside live traffic."""

    def test_bulk_revocation_is_resumable_and_never_breaks_the_daemon(
            self, ca_process: CaProcess) -> None:
        """kill -9 of the officer CLI between batches leaves whole batches revoked; running
        it again finishes the job (idempotent). Meanwhile acquisitions, single revocations
        and /health never get a 500; the CRL is re-signed a bounded number of times; every
        invariant holds at the end."""
        _seed_issued(ca_process.database, BULK_CERTIFICATES)
        ca = ca_process.start()
        cutoff = (datetime.now(UTC) - timedelta(days=1)).isoformat()
        marker = ca.directory / "cli-fault"
        env = {**os.environ, "SEKISHO_FAULT": "ca.bulk_between_batches::3",
               "SEKISHO_FAULT_MARKER": str(marker)}
        first = subprocess.Popen(
            ca_command(ca.config_path, "revoke", "--issued-before", cutoff, "--reason",
                       "cessationOfOperation"), env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not (marker.exists() and marker.read_text()):
            assert first.poll() is None and time.monotonic() < deadline, first.stderr
            time.sleep(0.02)
        first.kill()  # SIGKILL between two batches
        first.wait(10)
        revoked = ca.rows("SELECT COUNT(*) FROM certificates WHERE revoked_at IS NOT NULL")
        assert revoked[0][0] == 3 * 500  # whole batches, nothing half-done

        answers: list[Answer] = []
        delivered: dict[str, bytes] = {}
        stop = threading.Event()

        def traffic() -> None:
            index = 0
            while not stop.is_set():
                user = f"85{index:04d}"
                password = ca.acquisition_password(user)
                answer = ca.acquire(user, password)
                answers.append(answer)
                if answer.status == 201:
                    delivered[answer.body["serial"]] = _der(answer, password)
                    if index % 2:
                        answers.append(ca.api("POST", "/v1/revoke", {
                            "serial": answer.body["serial"], "reason": "superseded"}))
                answers.append(http("GET", ca.public_url + "/health"))
                index += 1

        worker = threading.Thread(target=traffic, daemon=True)
        number_before = ca.rows("SELECT crl_number FROM crl_state")[0][0]
        started = time.monotonic()
        worker.start()
        second = ca.cli("revoke", "--issued-before", cutoff, "--reason", "cessationOfOperation")
        duration = time.monotonic() - started
        stop.set()
        worker.join(60)
        assert second.returncode == 0, second.stderr
        assert f"revoked {BULK_CERTIFICATES - 1500} certificates" in second.stdout, second.stdout
        assert ca.rows("SELECT COUNT(*) FROM certificates WHERE revoked_at IS NULL"
                       " AND user_id LIKE '9%'") == [(0,)]
        bad = [a for a in answers if not _is_ok_or_named_busy(a)]
        assert not bad, bad[:3]
        assert any(a.status == 201 for a in answers)
        time.sleep(1.5)  # the last coalesced re-sign
        signings = ca.rows("SELECT crl_number FROM crl_state")[0][0] - number_before
        assert signings <= duration / 1.0 + 4, (signings, duration)
        check_invariants(ca, delivered)


class TestBusyStore:
    """R-FAULT-4: a write lock held elsewhere gives a bounded wait, then a named 503."""

    def test_write_lock_held_by_another_process_gives_503_store_busy(
            self, ca_process: CaProcess) -> None:
        """Another process holds SQLite's write lock longer than busy_timeout: the
        acquisition answers 503 store_busy with Retry-After (JSON, no traceback), /health
        keeps answering, and once the lock is released the same acquisition succeeds."""
        ca = ca_process.start()
        password = ca.acquisition_password("860001")
        holder = sqlite3.connect(ca.database, timeout=30, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            result: list[Answer] = []
            thread = threading.Thread(target=lambda: result.append(
                ca.acquire("860001", password, timeout=60)), daemon=True)
            thread.start()
            time.sleep(0.5)
            assert http("GET", ca.public_url + "/health", timeout=5).status == 200
            thread.join(60)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        (answer,) = result
        assert (answer.status, answer.error) == (503, "store_busy"), answer
        assert answer.headers.get("Retry-After") == "1"
        retry = ca.acquire("860001", password)
        assert retry.status in (201, 423), retry  # the busy try was never evaluated
        check_invariants(ca, {})


# -- real file systems -------------------------------------------------------------------------


def _move_database(ca: CaProcess, folder: Path) -> None:
    """Put the (closed, checkpointed) CA database into `folder` and point the config at it."""
    target = folder / "ca.sqlite3"
    shutil.copy2(ca.database, target)
    text = ca.config_path.read_text().replace('database = "var/ca/ca.sqlite3"',
                                              f'database = "{target}"')
    ca.config_path.write_text(text)
    ca.database = target


class TestStorageErrors:
    """R-FAULT-5: a full disk and a read-only store are named, never a traceback."""

    def test_full_disk_gives_named_503_keeps_ocsp_and_crl_and_recovers_without_restart(
            self, ca_process_factory: Callable[..., CaProcess],
            mounted: Callable[..., Path]) -> None:
        """With the store on a 3 MiB tmpfs filled to the last byte: acquisitions answer
        503 store_full (Retry-After, JSON), OCSP and the CRL keep answering from memory;
        when space returns the daemon issues again without a restart."""
        ca = ca_process_factory('request_deadline = "2s"\n')
        disk = mounted("tmpfs")
        _move_database(ca, disk)
        ca.start()
        password = ca.acquisition_password("870000")
        first = ca.acquire("870000", password)
        assert first.status == 201, first
        filler = disk / "filler"
        with filler.open("wb") as out, contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        answers: list[Answer] = []
        for index in range(1, 200):
            answer = ca.api("POST", f"/v1/users/87{index:04d}/acquisition-password", {})
            answers.append(answer)
            if answer.status == 503:
                break
        full = answers[-1]
        assert (full.status, full.error) == (503, "store_full"), full
        assert full.headers.get("Retry-After")
        assert all(a.status in (201, 503) for a in answers), [a.status for a in answers]
        issuer = ca.directory / "var" / "keys" / "g1.crt.pem"
        assert ocsp_status(ca, x509.load_pem_x509_certificate(issuer.read_bytes()),
                           first.body["serial"]) == "good"
        assert http("GET", ca.public_url + "/crl/g1.crl").status == 200
        assert '"store_full"' in ca.log_text()
        filler.unlink()
        again_password = ca.acquisition_password("879999")  # at once: space is back
        again = ca.acquire("879999", again_password)
        assert again.status == 201, again
        time.sleep(3)  # intents/tries that hit the full disk pass their 2 s deadline
        check_invariants(ca, {first.body["serial"]: _der(first, password),
                              again.body["serial"]: _der(again, again_password)})

    def test_start_on_a_read_only_store_names_the_cause(
            self, ca_process: CaProcess, mounted: Callable[..., Path], tmp_path: Path) -> None:
        """`serve` on a store in a read-only bind mount exits 1 with one line naming
        store_unwritable, not a Python traceback."""
        source = tmp_path / "store"
        source.mkdir(mode=0o700)
        _move_database(ca_process, source)
        read_only = mounted("bind-ro", source)
        text = ca_process.config_path.read_text().replace(str(source / "ca.sqlite3"),
                                                          str(read_only / "ca.sqlite3"))
        ca_process.config_path.write_text(text)
        done = subprocess.run(ca_command(ca_process.config_path, "serve"),
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 1, done
        assert "Traceback" not in done.stderr + done.stdout
        assert "store_unwritable" in done.stderr, done.stderr


class TestGatewayStorageErrors:
    """R-FAULT-5 at the gateway: its user store on a full disk is named, then recovers."""

    async def test_login_on_a_full_disk_is_a_named_503_then_recovers(
            self, mounted: Callable[..., Path]) -> None:
        """The gateway's database on a full 3 MiB tmpfs: a login raises Unavailable
        store_full (the middleware renders a 503 page, not a 500), and works again once
        space returns, on the same connection."""
        disk = mounted("tmpfs")
        store = await UserStore.open(disk / "gateway.sqlite3", SystemClock())
        hasher = PasswordHasher(time_cost=1, memory_cost_kib=1024)
        try:
            auth = Authenticator(store, hasher, PasswordPolicy(), clock=SystemClock())
            _, temporary = await auth.add_user("890001", name="Sato", customer="ABC",
                                               role="contractor", actor="helpdesk:test")
            filler = disk / "filler"
            with filler.open("wb") as out, contextlib.suppress(OSError):
                while True:
                    out.write(b"\0" * 65536)
                    out.flush()
            failure: Unavailable | None = None
            for _ in range(200):
                try:
                    await auth.login("890001", "wrong-password-1")
                    await store.unlock("890001", actor="helpdesk:test")
                except Unavailable as exc:
                    failure = exc
                    break
            assert failure is not None and failure.code == "store_full"
            assert failure.status == 503
            filler.unlink()
            result = await auth.login("890001", temporary)
            assert result.authenticated, result
        finally:
            await store.close()
            hasher.close()
