"""Short-lived, single-use acquisition tickets (issue 10 item 3; R-CERT-5).

The gateway's acquisition form holds two secrets: the officer-issued acquisition password
(checked here, counted, locked after `acquisition.max_failures`) and the login password
(checked at the gateway, counted toward the login lock). So that a client without the
acquisition password can neither test nor lock the login password, the gateway asks the CA
about the acquisition password *first* (`POST /v1/acquisition-tickets`). A right one yields a
ticket; only then does the gateway check the login password, and it acquires with the ticket.
Redeeming needs no second argon2 evaluation of the acquisition password: the ticket keeps
an HMAC of it keyed by the ticket, to confirm that the password that will encrypt the PKCS#12
is the one that was checked. A ticket lives `TICKET_LIFETIME`, serves once and only its user.

Tickets live in the CA's store (table `acquisition_tickets`, at most `MAX_TICKETS`, oldest
dropped first), so on a cluster (issue 13) any node redeems a ticket another node issued:
the gateway does not need the issuing node alive. The store holds only the ticket's SHA-256
and the HMAC keyed by the ticket itself: a reader of the database or a backup can neither
redeem a ticket nor test acquisition passwords against it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta
from typing import Protocol

from policy.clock import Clock

TICKET_LIFETIME = timedelta(minutes=2)
MAX_TICKETS = 10_000


class TicketBackend(Protocol):
    """The store's side (`ca.store.Store`, `ca.store_pg.PgStore`)."""

    async def put_ticket(self, ticket_hash: bytes, user_id: str, password_mac: bytes,
                         expires_at: float, now: float, limit: int) -> None: ...
    async def take_ticket(self, ticket_hash: bytes) -> tuple[str, bytes, float] | None: ...


class AcquisitionTickets:
    """Tickets by their SHA-256 (the ticket itself is never stored)."""

    def __init__(self, clock: Clock, backend: TicketBackend, *,
                 lifetime: timedelta = TICKET_LIFETIME, limit: int = MAX_TICKETS) -> None:
        self._clock = clock
        self._backend = backend
        self._lifetime = lifetime
        self._limit = limit

    async def issue(self, user_id: str, password: str) -> tuple[str, datetime]:
        """A new ticket for a user whose acquisition password was just verified."""
        now = self._clock.now()
        ticket = secrets.token_urlsafe(32)
        expires_at = now + self._lifetime
        await self._backend.put_ticket(_key(ticket), user_id, _mac(ticket, password),
                                       expires_at.timestamp(), now.timestamp(), self._limit)
        return ticket, expires_at

    async def redeem(self, ticket: str, user_id: str, password: str) -> bool:
        """True once for a live ticket of `user_id` issued for `password`; the ticket is
        spent by any redemption attempt, right or wrong, on any node."""
        found = await self._backend.take_ticket(_key(ticket))
        if found is None:
            return False
        owner, mac, expires_at = found
        return (expires_at > self._clock.now().timestamp()
                and hmac.compare_digest(owner.encode(), user_id.encode())
                and hmac.compare_digest(mac, _mac(ticket, password)))


def _key(ticket: str) -> bytes:
    return hashlib.sha256(ticket.encode()).digest()


def _mac(ticket: str, password: str) -> bytes:
    return hmac.new(ticket.encode(), password.encode(), hashlib.sha256).digest()
