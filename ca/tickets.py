"""Short-lived, single-use acquisition tickets (issue 10 item 3; R-CERT-5).

The gateway's acquisition form holds two secrets: the officer-issued acquisition password
(checked here, counted, locked after `acquisition.max_failures`) and the login password
(checked at the gateway, counted toward the login lock). So that a client without the
acquisition password can neither test nor lock the login password, the gateway asks the CA
about the acquisition password *first* (`POST /v1/acquisition-tickets`). A right one yields a
ticket; only then does the gateway check the login password, and it acquires with the ticket.
Redeeming needs no second argon2 evaluation of the acquisition password: the ticket keeps
only a SHA-256 of it, to confirm that the password that will encrypt the PKCS#12 is the one
that was checked. A ticket lives `TICKET_LIFETIME`, serves once and only its user; the store
is bounded (oldest dropped first) and lives in the CA process's memory (a restart drops
every ticket: the customer submits the form again).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta

from policy.clock import Clock

TICKET_LIFETIME = timedelta(minutes=2)
MAX_TICKETS = 10_000


@dataclass(frozen=True)
class _Ticket:
    user_id: str
    password_digest: bytes
    expires_at: datetime


class AcquisitionTickets:
    """Tickets by their SHA-256 (the ticket itself is never stored)."""

    def __init__(self, clock: Clock, *, lifetime: timedelta = TICKET_LIFETIME,
                 limit: int = MAX_TICKETS) -> None:
        self._clock = clock
        self._lifetime = lifetime
        self._limit = limit
        self._by_key: OrderedDict[bytes, _Ticket] = OrderedDict()

    def issue(self, user_id: str, password: str) -> tuple[str, datetime]:
        """A new ticket for a user whose acquisition password was just verified."""
        now = self._clock.now()
        for key in [k for k, t in self._by_key.items() if t.expires_at <= now]:
            del self._by_key[key]
        while len(self._by_key) >= self._limit:
            self._by_key.popitem(last=False)
        ticket = secrets.token_urlsafe(32)
        expires_at = now + self._lifetime
        self._by_key[_key(ticket)] = _Ticket(user_id, _digest(password), expires_at)
        return ticket, expires_at

    def redeem(self, ticket: str, user_id: str, password: str) -> bool:
        """True once for a live ticket of `user_id` issued for `password`; the ticket is
        spent by any redemption attempt, right or wrong."""
        found = self._by_key.pop(_key(ticket), None)
        return (found is not None and found.expires_at > self._clock.now()
                and hmac.compare_digest(found.user_id.encode(), user_id.encode())
                and hmac.compare_digest(found.password_digest, _digest(password)))


def _key(ticket: str) -> bytes:
    return hashlib.sha256(ticket.encode()).digest()


def _digest(password: str) -> bytes:
    return hashlib.sha256(password.encode()).digest()
