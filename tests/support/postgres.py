"""Fixtures for a real PostgreSQL (issue 12: "PostgreSQL in tests is a real server"): one
throwaway cluster per test session, made by `common.pgdev` (the same code as the developer's
`python -m common.pgdev`), and a fresh database per test cloned from an empty template.

Without the server binaries the tests that need them skip locally and fail under CI (the rule
of the browser tests: `.ci/run` installs `postgresql`, so CI must not pass by skipping).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from common.pgdev import ClusterError, LocalCluster, PostgresUnavailable

TEMPLATE = "sekisho_template"
_numbers = itertools.count(1)


def start_throwaway_cluster() -> LocalCluster:
    """initdb + start a cluster in a new temp folder (fsync off), or skip/fail when the
    binaries are missing; a start that fails leaves nothing behind."""
    try:
        cluster = LocalCluster.throwaway()
    except PostgresUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    try:
        cluster.start(timeout=30)
        cluster.psql(f"CREATE DATABASE {TEMPLATE} TEMPLATE template0")
    except BaseException:
        cluster.destroy()
        raise
    return cluster


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[LocalCluster]:
    """The session's PostgreSQL server; stopped (`-m immediate`) and deleted at the end,
    whether the tests passed or not."""
    cluster = start_throwaway_cluster()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def postgres_database(postgres_cluster: LocalCluster) -> Iterator[str]:
    """The name of a database of this test's own, dropped afterwards."""
    name = f"test_{os.getpid()}_{next(_numbers)}"
    postgres_cluster.psql(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    try:
        yield name
    finally:
        try:
            postgres_cluster.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        except ClusterError:
            if postgres_cluster.is_running():
                raise


@pytest.fixture
def postgres_dsn(postgres_cluster: LocalCluster, postgres_database: str) -> str:
    """A password-less DSN (Unix socket, superuser) for this test's own database."""
    return postgres_cluster.dsn(postgres_database)
