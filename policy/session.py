"""Session lifetime rules (R-SES-1, §2.8): an idle limit and an absolute limit.

Pure: the gateway passes the session's creation time, the time of its last operation and
`now`; these functions say whether the session still stands.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class SessionPolicy:
    """R-SES-1: 30 minutes without any operation end a session (§2.8).

    `absolute_timeout` bounds a session that is kept busy (for instance by a script or a
    forgotten auto-refreshing page): after 12 hours the user logs in again whatever happens.
    """

    idle_timeout: timedelta = timedelta(minutes=30)
    absolute_timeout: timedelta = timedelta(hours=12)

    def __post_init__(self) -> None:
        if self.idle_timeout <= timedelta(0):
            raise ValueError("session idle_timeout must be positive")
        if self.absolute_timeout < self.idle_timeout:
            raise ValueError("session absolute_timeout must not be shorter than idle_timeout")


class SessionState(enum.StrEnum):
    """Whether a session stands at a given moment."""

    ACTIVE = "active"
    IDLE_EXPIRED = "idle_expired"
    ABSOLUTE_EXPIRED = "absolute_expired"


def session_expires_at(
    created_at: datetime, last_seen_at: datetime, policy: SessionPolicy
) -> datetime:
    """The first instant at which the session no longer stands (unless used before)."""
    return min(last_seen_at + policy.idle_timeout, created_at + policy.absolute_timeout)


def session_state(
    created_at: datetime, last_seen_at: datetime, now: datetime, policy: SessionPolicy
) -> SessionState:
    """R-SES-1: the state of a session at `now`; both limits are exclusive of their end.

    Last used at 09:00, the session answers at 09:29:59 and has ended at 09:30:00 ("30
    minutes without any operation"). The absolute limit wins when both are reached, so the
    page can say why. A `now` before `last_seen_at` (clock stepped back) counts as no idle time.
    """
    if now >= created_at + policy.absolute_timeout:
        return SessionState.ABSOLUTE_EXPIRED
    if now >= last_seen_at + policy.idle_timeout:
        return SessionState.IDLE_EXPIRED
    return SessionState.ACTIVE
