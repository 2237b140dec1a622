"""Download pickups in the store (issue 12), on both backends: taken once by whichever
gateway process the download reaches, gone after expiry, and sealed: the database holds
neither the ticket nor a usable file."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import timedelta
from pathlib import Path

from gateway.ca_client import Delivered
from gateway.enrollment import PickupStore
from gateway.store import UserBackend
from gateway.users_pg import PgUserStore
from policy.clock import FakeClock
from tests.gateway.conftest import BOTH_STORES

pytestmark = BOTH_STORES
FILE = b"0\x82PKCS#12 bytes as the CA encrypted them" * 20


def _delivered() -> Delivered:
    return Delivered(user_id="600001", serial="ab12", not_after="2027-12-04T00:00:00Z",
                     pkcs12=FILE)


async def _raw_rows(store: UserBackend, tmp_path: Path) -> list[tuple[bytes, bytes]]:
    """(ticket_hash, sealed) of every stored pickup, read behind the store's back."""
    if isinstance(store, PgUserStore):
        conn = await store.settings.connect()
        try:
            return [(bytes(r[0]), bytes(r[1])) for r in
                    await conn.fetch("SELECT ticket_hash, sealed FROM pickups")]
        finally:
            await conn.close()
    with sqlite3.connect(tmp_path / "gateway" / "gateway.sqlite3") as raw:
        return [(bytes(r[0]), bytes(r[1])) for r in
                raw.execute("SELECT ticket_hash, sealed FROM pickups")]


async def test_acquire_on_a_download_on_b_once(store: UserBackend, clock: FakeClock) -> None:
    """Put by process A, peeked and taken by process B; a second take (A or B) gets
    nothing, and two takers at once: exactly one gets the file."""
    a, b = PickupStore(clock, store), PickupStore(clock, store)
    ticket = await a.put("acquire", _delivered(), None)
    peeked = await b.peek(ticket)
    assert peeked is not None and peeked.pkcs12 == FILE and peeked.user_id == "600001"
    taken = await asyncio.gather(b.take(ticket), a.take(ticket))
    assert [p.pkcs12 if p else None for p in taken].count(FILE) == 1
    assert await a.peek(ticket) is None and await b.take(ticket) is None


async def test_expired_pickup_is_gone(store: UserBackend, clock: FakeClock,
                                      tmp_path: Path) -> None:
    """After 10 minutes the file cannot be taken, and the next put deletes its row."""
    pickups = PickupStore(clock, store)
    ticket = await pickups.put("acquire", _delivered(), None)
    clock.advance(timedelta(minutes=10))
    assert await pickups.take(ticket) is None
    assert len(await _raw_rows(store, tmp_path)) == 1  # until the sweeper's next round
    assert await pickups.expire() == 1
    assert await _raw_rows(store, tmp_path) == []
    await pickups.put("acquire", _delivered(), None)
    clock.advance(timedelta(minutes=10))
    await pickups.put("acquire", _delivered(), None)  # a put also deletes expired ones
    assert len(await _raw_rows(store, tmp_path)) == 1


async def test_the_database_holds_no_usable_file(store: UserBackend, clock: FakeClock,
                                                 tmp_path: Path) -> None:
    """The row holds the ticket's SHA-256 and the file sealed under a key derived from the
    ticket: neither the ticket nor the file bytes are in it, and another ticket opens
    nothing."""
    pickups = PickupStore(clock, store)
    ticket = await pickups.put("renew", _delivered(), "f" * 64)
    [(ticket_hash, sealed)] = await _raw_rows(store, tmp_path)
    assert ticket.encode() not in ticket_hash + sealed
    assert FILE[:32] not in sealed
    assert await pickups.peek(ticket + "x") is None
    peeked = await pickups.peek(ticket)
    assert peeked is not None and peeked.fingerprint == "f" * 64
