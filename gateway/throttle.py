"""Per-address throttle for the anonymous acquisition form (issue 10 item 3).

`/auth/acquire` needs no certificate, so it is the one place where anyone may submit
passwords. Every POST counts against the client's address, right or wrong: at most `limit`
in any `window`. IPv6 clients are counted per /64 (one customer's connection usually holds a
whole /64, and an attacker can pick addresses inside it freely).

The count lives in the gateway's store (`acquire_tries`), not in the process: N gateway
processes or hosts on one store (issue 12) share one budget per address, instead of giving an
attacker N times the limit by spreading tries over them. Each address holds at most `limit`
rows; rows older than the window are swept with the sessions, so the table stays bounded by
the addresses seen in one window. If the store cannot be reached, the form fails closed (the
store's error page), as every other step of an acquisition would.
"""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from typing import Protocol

from policy.clock import Clock


def address_key(remote: str | None) -> str:
    """The counted unit: the IPv4 address, or the IPv6 /64."""
    if not remote:
        return "-"
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return remote
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class ThrottleBackend(Protocol):
    """The store's side (`gateway.users.UserStore`, `gateway.users_pg.PgUserStore`)."""

    async def count_acquire_try(self, address: str, now: float, window: float,
                                limit: int) -> bool: ...
    async def expire_acquire_tries(self, before: float) -> int: ...


class AddressThrottle:
    """A sliding window of attempts per client address, shared through the store."""

    def __init__(self, clock: Clock, backend: ThrottleBackend, *, limit: int,
                 window: timedelta) -> None:
        if limit < 1:
            raise ValueError("the throttle's limit must be at least 1")
        self._clock = clock
        self._backend = backend
        self._limit = limit
        self._window = window

    async def allow(self, remote: str | None) -> bool:
        """Count one attempt from `remote`; False when it is over the limit (not counted)."""
        return await self._backend.count_acquire_try(
            address_key(remote), self._clock.now().timestamp(), self._window.total_seconds(),
            self._limit)

    async def expire(self) -> int:
        """Forget tries older than the window (the sweeper's schedule); how many."""
        return await self._backend.expire_acquire_tries(
            (self._clock.now() - self._window).timestamp())
