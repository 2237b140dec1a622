"""Fixtures: a throwaway CA made with our own code, started for real on loopback (STYLE 9)."""

from __future__ import annotations

import contextlib
import itertools
import re
import secrets
import sqlite3
import subprocess
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from cryptography import x509

from ca import cli as ca_cli
from ca.app import build_internal_app, build_public_app
from ca.config import CaConfig, load_ca_config
from ca.daemon import internal_tls_context
from ca.public_listener import PublicListener
from ca.runtime import CaRuntime, read_api_token
from common.tlsfiles import tls_client_context
from policy.clock import FakeClock
from tests.support.postgres import (  # noqa: F401 - fixtures: a real PostgreSQL (issue 12)
    postgres_cluster,
    postgres_database,
    postgres_dsn,
)
from tests.support.servers import LoopThread, free_port
from tests.support.softhsm import SoftHsm, create_softhsm


@pytest.fixture
def clock() -> FakeClock:
    """A clock that only moves when the test moves it, starting at the real time.

    Starting at the real time lets openssl and curl, which check validity against the real
    clock, accept what the CA signs; tests that need other dates move it.
    """
    return FakeClock(datetime.now(UTC).replace(microsecond=0))


def write_config(directory: Path, *, public_port: int, internal_port: int,
                 extra: str = "", kdf_rounds: int = 2048, internal_tls: bool = False,
                 keys_extra: str = "", database: str = "var/ca/ca.sqlite3",
                 node_name: str = "node1") -> Path:
    """A config.toml for a test CA under `directory` (cheap PKCS#12 rounds unless asked);
    `keys_extra` adds lines to [keys] (e.g. the pkcs11 backend's); `database` is the SQLite
    path or a postgresql:// DSN (issue 13)."""
    path = directory / "config.toml"
    path.write_text(textwrap.dedent(f"""
        [paths]
        data_dir = "var"
        [logging]
        level = "warning"
        [ca]
        organization = "Sekisho Test"
        public_url = "http://127.0.0.1:{public_port}"
        public_listen = "127.0.0.1:{public_port}"
        internal_listen = "127.0.0.1:{internal_port}"
        database = "{database}"
        node_name = "{node_name}"
        api_token_file = "var/secrets/ca-api-token"
        internal_tls = {"true" if internal_tls else "false"}
        [keys]
        directory = "var/keys"
        passphrase_file = "var/secrets/ca-passphrase"
        passphrase_env = "SEKISHO_TEST_UNSET_PASSPHRASE"
    """) + keys_extra + textwrap.dedent(f"""
        [certificate]
        pkcs12_kdf_rounds = {kdf_rounds}
    """) + textwrap.dedent(extra))
    return path


@dataclass
class CaHarness:
    """A running CA: its config, runtime, URLs, token and the loop it runs on."""

    config_path: Path
    config: CaConfig
    runtime: CaRuntime
    loop: LoopThread
    public_url: str
    internal_url: str
    token: str
    clock: FakeClock
    directory: Path
    runners: list[Any]

    def stop(self) -> None:
        """Stop the listeners, close the runtime, stop the loop (once: a test may stop its
        CA early, e.g. to start another on the same ports)."""
        if not self.loop.loop.is_running():
            return

        async def shutdown() -> None:
            for runner in self.runners:
                await runner.cleanup()
            await self.runtime.close()

        self.loop.run(shutdown())
        self.loop.stop()

    def sql(self, statement: str, *params: Any) -> list[tuple[Any, ...]]:
        """Run one SQL statement on the CA's store directly, whichever the backend (`?`
        placeholders; a test's look behind the CA's back, or its tampering); returns rows."""
        if self.config.database_dsn is None:
            with contextlib.closing(sqlite3.connect(self.config.database)) as db, db:
                return [tuple(row) for row in db.execute(statement, params).fetchall()]
        numbers = itertools.count(1)
        numbered = re.sub(r"\?", lambda _match: f"${next(numbers)}", statement)

        async def run() -> list[tuple[Any, ...]]:
            conn = await asyncpg.connect(self.config.database_dsn)
            try:
                return [tuple(row) for row in await conn.fetch(numbered, *params)]
            finally:
                await conn.close()

        return self.loop.run(run())

    def stored_bytes(self) -> bytes:
        """Everything the store holds, as bytes: the files of a SQLite store; every row of
        every table of a PostgreSQL one (to prove a secret is nowhere in it)."""
        if self.config.database_dsn is None:
            return b"".join(path.read_bytes()
                            for path in self.config.database.parent.iterdir() if path.is_file())
        tables = [row[0] for row in self.sql(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        return b"".join(repr(self.sql(f"SELECT * FROM {table}")).encode()  # noqa: S608
                        for table in tables)

    def cli(self, *args: str) -> int:
        """Run `sekisho-ca` in-process (its own store connection, like a separate process)."""
        return ca_cli.main(["--config", str(self.config_path), *args], clock=self.clock)

    def sync(self) -> None:
        """What the daemon does within a fraction of a second after another process commits:
        notice the revocations, update OCSP, and finish re-signing the CRLs."""
        self.loop.run(self.runtime.feed.catch_up())
        self.loop.run(self.runtime.crls.settle())

    def time_passed(self) -> None:
        """What the daemon's schedules do while the (fake) clock moves on: renew the OCSP
        responder certificates that are due, and re-sign the CRLs that are due."""

        async def maintenance() -> None:
            self.runtime.ocsp.renew_responders()
            await self.runtime.crls.tick()

        self.loop.run(maintenance())

    def call(self, coro: Any) -> Any:
        """Run a coroutine on the CA's loop (e.g. runtime.authority methods)."""
        return self.loop.run(coro)

    def api(self, method: str, path: str, *, json: Any = None, token: str | None = "default",
            **kwargs: Any) -> tuple[int, Any]:
        """Call the internal API over real HTTP; returns (status, parsed JSON or text)."""
        headers = kwargs.pop("headers", {})
        if token is not None:
            headers["Authorization"] = f"Bearer {self.token if token == 'default' else token}"

        if self.config.internal_tls:
            kwargs.setdefault("ssl", tls_client_context(self.config.internal_tls_cert))

        async def call() -> tuple[int, Any]:
            async with aiohttp.ClientSession() as session, session.request(
                method, self.internal_url + path, json=json, headers=headers, **kwargs
            ) as response:
                if response.content_type == "application/json":
                    return response.status, await response.json()
                return response.status, await response.read()

        return self.loop.run(call())

    def acquisition_password(self, user_id: str) -> str:
        """Have the CA issue an acquisition password for `user_id` (the welcome letter's)."""
        status, body = self.api("POST", f"/v1/users/{user_id}/acquisition-password", json={})
        assert status == 201, body
        return str(body["acquisition_password"])

    def acquire(self, user_id: str, acquisition_password: str) -> tuple[int, Any]:
        """POST /v1/acquire: (status, body) as the CA answers."""
        return self.api("POST", "/v1/acquire",
                        json={"user_id": user_id, "acquisition_password": acquisition_password})

    def issue_csr(self, user_id: str, directory: Path) -> tuple[str, Path]:
        """`sekisho-ca issue --csr` for a fresh P-256 key made by openssl in `directory`;
        returns the serial (lowercase hex, as the CA writes it) and the PEM file."""
        key, csr, out = (directory / f"{user_id}.{ext}" for ext in ("key", "csr", "pem"))
        openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", str(key), "-subj", f"/CN={user_id}", "-out", str(csr))
        assert self.cli("issue", user_id, "--csr", str(csr), "--output", str(out)) == 0
        return format(x509.load_pem_x509_certificate(out.read_bytes()).serial_number, "x"), out

    def issuer_files(self) -> dict[str, Path]:
        """PEM files of the root, g1, its responder and a chain file, for openssl."""
        keys = self.config.keys.directory
        chain = self.directory / "chain.pem"
        chain.write_bytes((keys / "g1.crt.pem").read_bytes() + (keys / "root.crt.pem").read_bytes())
        return {"root": keys / "root.crt.pem", "g1": keys / "g1.crt.pem",
                "g1-ocsp": keys / "g1-ocsp.crt.pem", "chain": chain}


def init_ca(directory: Path, clock: FakeClock, **config_kwargs: Any) -> Path:
    """Write a config and run `sekisho-ca init` for it; returns the config path."""
    public_port, internal_port = free_port(), free_port()
    path = write_config(directory, public_port=public_port, internal_port=internal_port,
                        **config_kwargs)
    assert ca_cli.main(["--config", str(path), "init", "--generate-passphrase"],
                       clock=clock) == 0
    return path


def start_ca(config_path: Path, clock: FakeClock) -> CaHarness:
    """Start the real public and internal apps on the ports the config names."""
    config = load_ca_config(config_path)
    loop = LoopThread()
    runtime = loop.run(CaRuntime.open(config, clock))
    token = read_api_token(config.api_token_file)
    public_runner = loop.run(PublicListener.start(build_public_app(runtime), "127.0.0.1",
                                                  config.public_listen.port))
    internal_runner, _ = loop.start_app(build_internal_app(runtime, token),
                                        config.internal_listen.port,
                                        ssl_context=internal_tls_context(config, clock))
    scheme = "https" if config.internal_tls else "http"
    return CaHarness(
        config_path=config_path, config=config, runtime=runtime, loop=loop,
        public_url=f"http://127.0.0.1:{config.public_listen.port}",
        internal_url=f"{scheme}://127.0.0.1:{config.internal_listen.port}",
        token=token, clock=clock, directory=config_path.parent,
        runners=[public_runner, internal_runner],
    )


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> SoftHsm:
    """A throwaway SoftHSM2 token for this test session (R-KEY-1)."""
    return create_softhsm(tmp_path_factory.mktemp("softhsm"))


@pytest.fixture
def key_backend() -> str:
    """Where the test CA keeps its keys: "file" unless the test is marked `key_backends`,
    which runs it with "pkcs11" (SoftHSM2) as well (see pytest_generate_tests)."""
    return "file"


@pytest.fixture
def store_backend() -> str:
    """Where the test CA keeps its records: "sqlite" unless the test is marked
    `store_backends`, which runs it on PostgreSQL as well (issue 13)."""
    return "sqlite"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked `key_backends` run once per key backend: encrypted files and a token;
    tests marked `store_backends` once per store: SQLite and PostgreSQL. Marked with both,
    they run file+sqlite, pkcs11+sqlite and file+postgresql: each backend is covered without
    the whole cross product (the key and store seams do not meet)."""
    keys = ("key_backend" in metafunc.fixturenames
            and metafunc.definition.get_closest_marker("key_backends") is not None)
    stores = ("store_backend" in metafunc.fixturenames
              and metafunc.definition.get_closest_marker("store_backends") is not None)
    if keys and stores:
        metafunc.parametrize("key_backend,store_backend", [
            ("file", "sqlite"), ("pkcs11", "sqlite"), ("file", "postgresql")])
    elif keys:
        metafunc.parametrize("key_backend", ["file", "pkcs11"])
    elif stores:
        metafunc.parametrize("store_backend", ["sqlite", "postgresql"])


def store_backend_config(store_backend: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """write_config's `database` for `store_backend`: the default SQLite file, or a DSN of a
    fresh database on the session's throwaway PostgreSQL."""
    if store_backend == "sqlite":
        return {}
    return {"database": request.getfixturevalue("postgres_dsn")}


def key_backend_config(key_backend: str, directory: Path, request: pytest.FixtureRequest,
                       ) -> str:
    """The [keys] lines for `key_backend`: nothing for files; for pkcs11, the session's
    SoftHSM2 token with a key-label prefix of this CA's own."""
    if key_backend == "file":
        return ""
    token: SoftHsm = request.getfixturevalue("softhsm")
    return token.keys_config(directory, f"t{secrets.token_hex(4)}-")


@pytest.fixture
def ca(tmp_path: Path, clock: FakeClock, key_backend: str, store_backend: str,
       request: pytest.FixtureRequest) -> Iterator[CaHarness]:
    """A freshly initialised CA, running on loopback with the fake clock; its keys in files,
    or in a SoftHSM2 token for tests marked `key_backends`; its store in SQLite, or on
    PostgreSQL too for tests marked `store_backends`."""
    keys_extra = key_backend_config(key_backend, tmp_path, request)
    harness = start_ca(init_ca(tmp_path, clock, keys_extra=keys_extra,
                               **store_backend_config(store_backend, request)), clock)
    yield harness
    harness.stop()


def openssl(*args: str, input_bytes: bytes | None = None, check: bool = True,
            ) -> subprocess.CompletedProcess[str]:
    """Run the openssl CLI; returns text output."""
    result = subprocess.run(
        ["openssl", *args], input=input_bytes.decode() if input_bytes else None,
        capture_output=True, text=True, timeout=60, check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed: {result.stderr}")
    return result
