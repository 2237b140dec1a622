"""Revocation events for followers (the gateway) and in-process listeners (OCSP, CRL).

Revocations may be committed by this daemon or by the officer CLI in another process writing to
the same database. The feed therefore watches the store's revocation sequence (a cheap indexed
query every `poll_interval`) as well as being told directly by the in-process service, and
wakes long-polling followers at once either way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from ca.storage import CaStore
from ca.store import CertRecord

_log = structlog.get_logger("ca.feed")
Listener = Callable[[list[CertRecord]], Awaitable[None]]


class RevocationFeed:
    """Tracks the highest revocation sequence seen and notifies listeners of new ones."""

    def __init__(self, store: CaStore, poll_interval: float = 0.25) -> None:
        self._store = store
        self._poll_interval = poll_interval
        self._changed = asyncio.Condition()
        self._seen_seq = 0
        self._catch_up_lock = asyncio.Lock()
        self._closing = False
        self.listeners: list[Listener] = []

    @property
    def last_seq(self) -> int:
        """The highest revocation sequence number processed."""
        return self._seen_seq

    async def start(self) -> None:
        """Begin at the store's current position (listeners load their own state at start)."""
        self._seen_seq = await self._store.last_revocation_seq()

    async def catch_up(self, _records: list[CertRecord] | None = None) -> None:
        """Process every revocation after the last one seen, in order."""
        async with self._catch_up_lock:
            new = await self._store.revocations_after(self._seen_seq)
            while new:
                for listener in self.listeners:
                    try:
                        await listener(new)
                    except Exception:
                        _log.exception("revocation_listener_failed")
                self._seen_seq = max(r.revocation_seq or 0 for r in new)
                new = await self._store.revocations_after(self._seen_seq)
        async with self._changed:
            self._changed.notify_all()

    async def run(self) -> None:
        """Poll for revocations committed by other processes until cancelled."""
        while True:
            await asyncio.sleep(self._poll_interval)
            try:
                if await self._store.last_revocation_seq() > self._seen_seq:
                    await self.catch_up()
            except Exception:
                _log.exception("revocation_poll_failed")

    async def close(self) -> None:
        """Answer every long-poll at once: the daemon is stopping and must not wait for them."""
        self._closing = True
        async with self._changed:
            self._changed.notify_all()

    async def wait_after(self, seq: int, wait_seconds: float) -> list[CertRecord]:
        """Revocations after `seq`, waiting up to `wait_seconds` for one to happen (or for the
        daemon to stop)."""
        if self._seen_seq <= seq and not self._closing:
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._changed.wait_for(lambda: self._seen_seq > seq or self._closing),
                        wait_seconds,
                    )
        return await self._store.revocations_after(seq)
