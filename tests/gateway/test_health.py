"""GET /health, /ready and /metrics on the gateway's TLS listener (issue 12 "Processes"), asked
with curl without a client certificate; the clock is the harness's FakeClock."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from gateway.cli import worker_owner
from gateway.state import REVOCATION
from gateway.users import UserStore
from policy.clock import FakeClock
from tests.gateway.conftest import GatewayHarness, start_gateway


def _get(gw: GatewayHarness, path: str, *args: str) -> tuple[int, str]:
    result = gw.curl(path, None, *args)
    body, _, status = result.stdout.rpartition("\n")
    return int(status), body


def _ready(gw: GatewayHarness) -> tuple[int, dict[str, object]]:
    status, body = _get(gw, "/ready")
    return status, json.loads(body)


def test_health_is_the_gateways_own_answer_without_certificate_or_session(
        gw: GatewayHarness) -> None:
    """Before, /health was proxied like any path: without a session it redirected to the
    login page. Now the gateway answers it itself; HEAD too; it is never cached."""
    status, body = _get(gw, "/health")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    headers = gw.curl("/health", None, "-I").stdout
    assert headers.startswith("HTTP/1.1 200") and "cache-control: no-store" in headers.lower()
    # A path below it is still the backend's (behind the login).
    assert _get(gw, "/health/x")[0] == 303


def test_ready_when_store_bundle_and_revocation_feed_are_fine(gw: GatewayHarness) -> None:
    assert _ready(gw) == (200, {"ready": True})


def test_ready_tolerates_a_short_ca_outage_then_says_revocation_stale(
        gw: GatewayHarness, clock: FakeClock) -> None:
    """The CA stops: the feed is lost, yet for ready_revocation_max_age (60 s) the worker
    stays ready (cached OCSP answers still hold); one second past it, 503 revocation_stale."""
    revocation = gw.app[REVOCATION]
    gw.stop_ca()
    gw.run(_until(lambda: not revocation.following))
    assert _ready(gw)[0] == 200
    clock.advance(timedelta(seconds=61))
    status, body = _ready(gw)
    assert status == 503
    assert body == {"ready": False, "reason": "revocation_stale",
                    "reasons": ["revocation_stale"]}


def test_ready_says_trust_bundle_expired_past_every_ca_certificate(
        gw: GatewayHarness, clock: FakeClock) -> None:
    clock.advance(timedelta(days=365 * 40))
    status, body = _ready(gw)
    assert status == 503 and "trust_bundle_expired" in body["reasons"]  # type: ignore[operator]


def test_ready_says_store_unreachable_when_the_store_does_not_answer(
        gw: GatewayHarness) -> None:
    gw.run(gw.users.close())
    status, body = _ready(gw)
    assert status == 503 and body["reason"] == "store_unreachable"


def test_metrics_count_answers_by_status_class(gw: GatewayHarness) -> None:
    """Loopback (the default metrics_allow) reads the Prometheus text; the counters move."""
    def count(text: str) -> float:
        for line in text.splitlines():
            if line.startswith('sekisho_gateway_requests_total{status="2xx",worker="1"}'):
                return float(line.split()[-1])
        return 0.0

    status, first = _get(gw, "/metrics")
    assert status == 200 and "# TYPE sekisho_gateway_requests_total counter" in first
    for _ in range(3):
        _get(gw, "/health")
    assert count(_get(gw, "/metrics")[1]) >= count(first) + 3
    headers = gw.curl("/metrics", None, "-I").stdout.lower()
    assert "content-type: text/plain; version=0.0.4" in headers


@pytest.fixture
def gw_closed_metrics(tmp_path: Path, clock: FakeClock) -> Iterator[GatewayHarness]:
    harness = start_gateway(tmp_path, clock, extra='metrics_allow = ["10.0.0.0/8"]')
    try:
        yield harness
    finally:
        harness.stop()


def test_metrics_are_not_shown_to_other_addresses(gw_closed_metrics: GatewayHarness) -> None:
    """Only the monitoring addresses of metrics_allow read /metrics; others get the 404 page
    (and /health, /ready stay open to the balancer)."""
    status, body = _get(gw_closed_metrics, "/metrics")
    assert status == 404 and "sekisho_gateway" not in body
    assert _get(gw_closed_metrics, "/health")[0] == 200


async def _until(condition: object, seconds: float = 10) -> None:
    for _ in range(int(seconds / 0.02)):
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


async def test_a_worker_never_settles_its_siblings_pending_login_tries(
        tmp_path: Path, clock: FakeClock) -> None:
    """R-FAULT-3 with several workers: worker 2's start-up and sweeps settle dead tries only.
    Before, every process was instance "gateway", so worker 2 declared worker 1's in-flight
    try dead (a failure counted against a user whose password was still being checked)."""
    path = tmp_path / "gateway.sqlite3"
    first, second = await UserStore.open(path, clock), await UserStore.open(path, clock)
    first.owner, second.owner = worker_owner("1"), worker_owner("2")
    try:
        await first.add_user("800001", name="T", customer="C", role="contractor",
                             password_hash="x", actor="helpdesk:test")
        await first.reserve_attempt("800001", 3)
        assert await second.expire_attempts(3) == []
        restarted = await UserStore.open(path, clock)
        restarted.owner = worker_owner("1")  # slot 1 again: its predecessor is dead
        try:
            assert await restarted.expire_attempts(3) == ["800001"]
        finally:
            await restarted.close()
    finally:
        await first.close()
        await second.close()
