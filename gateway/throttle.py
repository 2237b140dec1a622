"""Per-address throttle for the anonymous acquisition form (issue 10 item 3).

`/auth/acquire` needs no certificate, so it is the one place where anyone may submit
passwords. Every POST counts against the client's address, right or wrong: at most `limit`
in any `window`. IPv6 clients are counted per /64 (one customer's connection usually holds a
whole /64, and an attacker can pick addresses inside it freely). Memory is bounded: at most
`max_addresses` are tracked, each with at most `limit` timestamps; when full, the address
seen least recently is forgotten first.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from datetime import datetime, timedelta

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


class AddressThrottle:
    """A sliding window of attempts per client address."""

    def __init__(self, clock: Clock, *, limit: int, window: timedelta,
                 max_addresses: int = 10_000) -> None:
        if limit < 1:
            raise ValueError("the throttle's limit must be at least 1")
        self._clock = clock
        self._limit = limit
        self._window = window
        self._max = max_addresses
        self._attempts: OrderedDict[str, deque[datetime]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._attempts)

    def allow(self, remote: str | None) -> bool:
        """Count one attempt from `remote`; False when it is over the limit (not counted)."""
        key = address_key(remote)
        now = self._clock.now()
        times = self._attempts.pop(key, None)
        if times is None:
            times = deque(maxlen=self._limit)
            while len(self._attempts) >= self._max:
                self._attempts.popitem(last=False)
        self._attempts[key] = times  # most recently seen last
        while times and times[0] <= now - self._window:
            times.popleft()
        if len(times) >= self._limit:
            return False
        times.append(now)
        return True
