"""A separate process for the PostgreSQL tests (tests/common/test_postgres.py): what two
daemons starting at once, or two CA nodes contending for leadership, do.

    python -m tests.support.pgworker migrate DSN   # READY, then migrate on a line on stdin
    python -m tests.support.pgworker leader DSN NAME NODE    # print ELECTED / LOST lines

Each prints one line per event and flushes, so the test reads them as they happen.
"""

from __future__ import annotations

import asyncio
import sys

from common.postgres import LeaderElection, PostgresSettings, migrate

# A migration that would fail if it ran twice (no IF NOT EXISTS) and that holds its
# transaction long enough (pg_sleep) for the other process to arrive while it runs.
RACE_MIGRATIONS = [
    "CREATE TABLE applied (pid integer NOT NULL); SELECT pg_sleep(0.5)",
    "INSERT INTO applied VALUES (pg_backend_pid())",
]


async def _migrate(dsn: str) -> None:
    settings = PostgresSettings(dsn)
    conn = await settings.connect()
    try:
        # A start barrier: the test sends GO to both processes once both are connected.
        print("READY", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        result = await migrate(conn, RACE_MIGRATIONS, name="race")
        print(f"MIGRATED {result.before} {result.after}", flush=True)
    finally:
        await conn.close()


async def _lead(dsn: str, name: str, node: str) -> None:
    election = LeaderElection(
        PostgresSettings(dsn), name, node=node,
        on_elected=lambda: print(f"ELECTED {node}", flush=True),
        on_lost=lambda: print(f"LOST {node}", flush=True))
    await election.start()
    print(f"STARTED {node}", flush=True)
    # Run until killed, or until the test closes our stdin.
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    await election.close()


def main(argv: list[str]) -> None:
    """Dispatch on the first argument (see the module docstring)."""
    if argv[0] == "migrate":
        asyncio.run(_migrate(argv[1]))
    elif argv[0] == "leader":
        asyncio.run(_lead(argv[1], argv[2], argv[3]))
    else:
        raise SystemExit(f"unknown command {argv[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
