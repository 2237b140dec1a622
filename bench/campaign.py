"""Re-issuance campaign figures (issue: issuer generations and the re-issuance campaign).

1. `sekisho-ca campaign status` over 10,000 affected users (a third of them re-acquired):
   wall time of the whole command, and of the report computation alone.
2. The gateway's per-request cost of the cutover rule: the rule's own cost per request
   (measured in-process over many calls) against the cost of one proxied request through the
   gateway (measured with and without a configured cutover, same run, by bench/gateway.py's
   machinery when available).

    python bench/campaign.py [--users 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import subprocess
import sys
import time
import timeit
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._support import ROOT, make_ca
from ca.campaign import campaign_status
from ca.config import load_ca_config
from ca.store import Store
from policy.certificates import CertFacts, state_at
from policy.cutover import Cutover, cut_over_test

JST = timezone(timedelta(hours=9))
CUTOVER = """
[[cutover]]
name = "notice-2021"
issued_before = 2020-11-12T00:00:00+09:00
effective_at = 2021-02-24T00:00:00+09:00
"""


def seed(database: Path, users: int) -> None:
    """Affected certificates for every user; a replacement for every third one."""
    affected_day = int(datetime(2020, 6, 1, tzinfo=JST).timestamp())
    reacquired_day = int(datetime(2021, 2, 25, tzinfo=JST).timestamp())
    year = 365 * 86400
    rows = []
    for index in range(users):
        user = f"c{index:06d}"
        rows.append((f"{index + 1:x}0a", user, affected_day, affected_day + year))
        if index % 3 == 0:
            rows.append((f"{index + 1:x}0b", user, reacquired_day, reacquired_day + year))
    with sqlite3.connect(database) as db:
        db.executemany(
            "INSERT INTO certificates (serial, user_id, generation, kind, state, not_before,"
            " not_after, der, created_at) VALUES (?, ?, 'g1', 'server_key', 'issued', ?, ?,"
            " x'3000', ?)",
            [(serial, user, nb, na, nb) for serial, user, nb, na in rows],
        )


async def report_only(config_path: Path) -> tuple[float, int, int]:
    """The report computed in-process from the store (query + grouping)."""
    config = load_ca_config(config_path)
    store = await Store.open(config.database)
    try:
        started = time.perf_counter()
        certificates = await store.list_certificates()
        status = campaign_status(config.cutovers[0], certificates)
        return time.perf_counter() - started, status.affected, status.reacquired
    finally:
        await store.close()


def rule_cost() -> tuple[float, float]:
    """Seconds per request of the certificate-state check with and without the cutover rule."""
    cutover = Cutover("notice-2021", effective_at=datetime(2021, 2, 24, tzinfo=JST),
                      issued_before=datetime(2020, 11, 12, tzinfo=JST))
    with_rule = cut_over_test([cutover])
    cert = CertFacts("ab", "g2", datetime(2021, 3, 1, tzinfo=UTC),
                     datetime(2022, 3, 1, tzinfo=UTC))
    now = datetime(2021, 6, 1, tzinfo=UTC)
    number = 200_000
    plain = min(timeit.repeat(lambda: state_at(cert, now), number=number, repeat=5)) / number
    ruled = min(timeit.repeat(lambda: state_at(cert, now, with_rule), number=number,
                              repeat=5)) / number
    return plain, ruled


def main() -> None:
    """Run and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=10_000)
    args = parser.parse_args()
    config_path = make_ca(kdf_rounds=2048, extra=CUTOVER)
    seed(load_ca_config(config_path).database, args.users)

    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "ca", "--config", str(config_path), "campaign", "status",
         "--csv", str(config_path.parent / "campaign.csv")],
        capture_output=True, text=True, check=True, cwd=ROOT)
    wall = time.perf_counter() - started
    computed, affected, reacquired = asyncio.run(report_only(config_path))
    print(f"campaign status, {affected} affected users ({reacquired} re-acquired):")
    print(f"  whole command (process start, open store, report, CSV): {wall * 1000:.0f} ms")
    print(f"  report alone (query + grouping): {computed * 1000:.0f} ms")
    print("  " + result.stdout.strip().splitlines()[1].strip())

    plain, ruled = rule_cost()
    print(f"cutover rule per request: without {plain * 1e6:.2f} us, with {ruled * 1e6:.2f} us, "
          f"added {(ruled - plain) * 1e6:.2f} us")
    try:
        from bench.gateway import proxied_request_cost  # type: ignore[attr-defined]
    except ImportError:
        print("gateway benchmark not available: proxied request cost not measured")
        return
    without, with_rule = proxied_request_cost(cutover_config=CUTOVER)
    print(f"proxied request through the gateway: without cutover {without * 1e6:.0f} us, "
          f"with cutover {with_rule * 1e6:.0f} us")
    print(f"rule's share of a proxied request: {(ruled - plain) / without * 100:.3f} % "
          f"(target < 2 %); measured difference {(with_rule - without) / without * 100:+.1f} %")


if __name__ == "__main__":
    main()
