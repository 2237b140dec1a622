"""`sekisho-gateway`: run the gateway, and the helpdesk's user commands (§2.6, §2.7).

    sekisho-gateway [--config config.toml] serve
    sekisho-gateway tls-init
    sekisho-gateway users add USER_ID --name NAME --customer CUSTOMER --role admin|contractor
    sekisho-gateway users reset-password USER_ID
    sekisho-gateway users unlock USER_ID
    sekisho-gateway users disable USER_ID
    sekisho-gateway users show USER_ID
    sekisho-gateway users list
    sekisho-gateway audit verify
    sekisho-gateway db migrate | db status
    sekisho-gateway db copy --to postgresql://... [--password-file F | --password-env V]
    sekisho-gateway audit show [--user ID] [--action A] [--operator-name N] [--since T]
                               [--until T] [--limit N] [--json]

`--config PATH` (or `$SEKISHO_CONFIG`) and `--operator NAME` (default: the OS user, recorded
in the audit trail as `helpdesk:NAME`) are accepted anywhere on the line.

Every failure is one line on stderr and exit status 1 (2 for a usage error), never a
traceback. Secrets (temporary and acquisition passwords) are printed once and never logged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import secrets
import sqlite3
import ssl
import stat
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiosqlite
import structlog
from aiohttp import web

from common import audit
from common.cli import add_common_options, config_path, operator_name, table
from common.config import ConfigError, to_utc_datetime
from common.eventloop import loop_factory, until_stopped
from common.files import restrict_new_files
from common.listener import ConnectionGuard, TlsListener, ensure_descriptors, serve_guarded
from common.logging import configure_logging
from common.passwords import PasswordHasher
from common.postgres import PostgresConfigError, PostgresSettings
from common.postgres import schema_version as pg_schema_version
from common.sqlite import Owner
from common.tlsfiles import ensure_server_certificate, tls_client_context
from gateway import supervisor
from gateway.auth import Authenticator
from gateway.ca_client import CaClient, CaRefused, CaUnavailable
from gateway.config import GatewayConfig, load_gateway_config, parse_workers
from gateway.errors import GatewayError
from gateway.metrics import worker_id, worker_started
from gateway.store import UserBackend, open_user_store
from gateway.tls import TrustBundle, server_context
from gateway.trust import TrustAnchor, TrustAnchorError, write_cache
from gateway.users import MIGRATIONS, User, UserStore
from policy.clock import Clock, SystemClock

HELPDESK = "helpdesk"
JST = timezone(timedelta(hours=9), "JST")


def _helpdesk(args: argparse.Namespace) -> str:
    """The audit actor of a helpdesk command: `helpdesk:<operator>` (issue 15 item 14)."""
    return f"{HELPDESK}:{operator_name(args)}"


def _when(value: datetime | None) -> str:
    """A time as the helpdesk reads it: Japan time, as the customer sees it, then UTC."""
    if value is None:
        return "-"
    return f"{value.astimezone(JST):%Y-%m-%d %H:%M} JST ({value.astimezone(UTC):%H:%M} UTC)"


class CliError(Exception):
    """A failure to report as one line."""


def read_api_token(path: Path) -> str:
    """The CA's internal API token; the file must exist and be readable by its owner only."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise CliError(f"the CA API token file {path} does not exist (run `sekisho-ca init`)"
                       ) from None
    if stat.S_IMODE(mode) & 0o077:
        raise CliError(f"{path} is readable by others; run: chmod 600 {path}")
    token = path.read_text().strip()
    if len(token) < 32:
        raise CliError(f"the CA API token in {path} is too short")
    return token


def ca_client_for(config: GatewayConfig) -> CaClient:
    """A CA client for every configured CA node, with the token from config; each https://
    node's listener is pinned to its own `gateway.ca_internal_trust` file (issue 13)."""
    contexts: list[ssl.SSLContext | None] = []
    for url, trust in zip(config.ca_internal_urls, config.ca_internal_trusts, strict=True):
        if not url.startswith("https://"):
            contexts.append(None)
            continue
        if trust is not None and not trust.is_file():
            raise ConfigError(f"gateway.ca_internal_trust: {trust} does not exist; the CA makes "
                              "it on its first `serve` with ca.internal_tls (start the CA "
                              "first), or point it at the CA's internal certificate")
        contexts.append(tls_client_context(trust))
    return CaClient(config.ca_internal_urls, config.ca_public_urls,
                    read_api_token(config.ca_api_token_file), internal_ssl=contexts)


def trust_anchor_for(config: GatewayConfig) -> TrustAnchor:
    """The operator's root for customer certificates (gateway.ca_root / ca_root_sha256)."""
    try:
        return TrustAnchor.from_config(config.ca_root, config.ca_root_sha256)
    except TrustAnchorError as exc:
        raise ConfigError(str(exc)) from None


async def load_trust_bundle(ca: CaClient, cache: Path, anchor: TrustAnchor, *,
                            attempts: int = 20) -> TrustBundle:
    """Fetch the CA's issuer bundle (retrying while the CA starts) and keep only what chains
    to `anchor` (gateway.trust); cache that. Without the CA: the cache, filtered again."""
    for attempt in range(attempts):
        try:
            fetched = await ca.trust_bundle()
        except CaUnavailable:
            if attempt + 1 < attempts:
                await asyncio.sleep(0.5)
            continue
        try:
            bundle = anchor.filter(fetched, source=ca.public_url + "/certs/bundle.pem")
        except TrustAnchorError as exc:
            raise CliError(f"{exc}; refusing the fetched trust bundle") from None
        write_cache(cache, bundle)
        return bundle
    if cache.exists():
        try:
            return anchor.filter(cache.read_bytes(), source=str(cache))
        except TrustAnchorError as exc:
            raise CliError(f"the cached trust bundle is unusable: {exc}") from None
    raise CliError(f"cannot fetch the trust bundle from {ca.public_url} and no cached copy "
                   f"at {cache}; start the CA first")


# -- serve ----------------------------------------------------------------------------------


async def cmd_serve(config: GatewayConfig, clock: Clock, args: argparse.Namespace) -> int:
    """Run the gateway until SIGINT/SIGTERM."""
    from gateway.app import build_app, prepare_server

    if ensure_server_certificate(config.tls_cert, config.tls_key, config.public_url, clock):
        print(f"created a self-signed demo server certificate {config.tls_cert}",
              file=sys.stderr)
    anchor = trust_anchor_for(config)
    ca = ca_client_for(config)
    bundle = await load_trust_bundle(ca, config.trust_bundle_cache, anchor)
    context = server_context(config.tls_cert, config.tls_key, bundle)
    users = await open_user_store(config, clock)
    worker = supervisor.is_worker()
    if worker:
        if config.postgres is None:
            # One host shares the SQLite file: a worker's slot owns its tries, so that its
            # restart settles its dead predecessor's tries at once (on PostgreSQL every
            # process is its own owner: slots of other hosts share these names).
            assert isinstance(users, UserStore)
            users.owner = worker_owner(worker_id())
        structlog.contextvars.bind_contextvars(worker=int(worker_id()))  # on every log line
    hasher = PasswordHasher()
    app = build_app(config, clock=clock, users=users, hasher=hasher, ca_client=ca,
                    bundle=bundle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    prepare_server(runner)
    server: asyncio.Server | TlsListener | None = None
    guard: ConnectionGuard | None = None
    try:
        assert runner.server is not None
        # Each client connection may also hold a backend connection.
        ensure_descriptors(2 * config.connection_limits.max_connections)
        # Header, body and keep-alive timeouts, a TLS handshake timeout and a connection cap
        # (common/listener.py): aiohttp's own site has none of the first three.
        server, guard = await serve_guarded(runner.server, config.listen.host,
                                            config.listen.port, config.connection_limits,
                                            name="gateway", ssl_context=context,
                                            # Workers: one accept queue each (supervisor.py).
                                            reuse_port=worker)
        worker_started()
        supervisor.notify_ready()
        loop = asyncio.get_running_loop()
        # Start-up objects (aiohttp, cryptography, argon2, zxcvbn's dictionaries) live for the
        # whole run: out of the collector's generations, full collections stay short (as in
        # ca/daemon.py).
        gc.collect()
        gc.freeze()
        print(f"gateway listening on {config.public_url}/ (backend {config.backend_url}, "
              f"event loop {type(loop).__module__.split('.')[0]})", file=sys.stderr, flush=True)
        await until_stopped()
    finally:
        if server is not None:
            server.close()
        if guard is not None:
            await guard.stop()
        await runner.cleanup()
        await users.close()
        hasher.close()
    return 0


def worker_owner(slot: str) -> Owner:
    """Who holds a worker's login tries (R-FAULT-3): its slot, so that a restarted worker
    settles its dead predecessor's pending tries at once, and never the tries its sibling
    workers are checking right now (common.sqlite.Owner declares every earlier run of the
    same instance name dead)."""
    return Owner(f"gateway-w{slot}", secrets.token_hex(8))


def supervise(config: GatewayConfig, path: Path, workers: int, clock: Clock) -> int:
    """`serve` with `workers` > 1: the supervising parent (gateway/supervisor.py)."""
    # Made once here: workers racing to create the demo certificate could pair a key with
    # another worker's certificate.
    if ensure_server_certificate(config.tls_cert, config.tls_key, config.public_url, clock):
        print(f"created a self-signed demo server certificate {config.tls_cert}",
              file=sys.stderr)
    lock = supervisor.prepare_metrics_dir(config.metrics_dir)
    try:
        print(f"gateway supervisor: {workers} workers on {config.public_url}/",
              file=sys.stderr, flush=True)
        command = [sys.executable, "-m", "gateway", "--config", str(path.resolve()), "serve"]
        return supervisor.Supervisor(command, workers, config.metrics_dir).run()
    finally:
        os.close(lock)


async def cmd_tls_init(config: GatewayConfig, clock: Clock, args: argparse.Namespace) -> int:
    """Create the demo server certificate if it does not exist."""
    created = ensure_server_certificate(config.tls_cert, config.tls_key, config.public_url,
                                        clock)
    print(f"{'created' if created else 'kept existing'} {config.tls_cert} and {config.tls_key}")
    return 0


# -- users ----------------------------------------------------------------------------------


async def _with_users(config: GatewayConfig, clock: Clock,
                      action: Callable[[UserBackend, Authenticator], Awaitable[int]]) -> int:
    store = await open_user_store(config, clock)
    hasher = PasswordHasher(workers=1)
    try:
        auth = Authenticator(store, hasher, config.password, clock=clock,
                             lockout_max=config.lockout_max_failures,
                             temporary_password_length=config.temporary_password_length)
        return await action(store, auth)
    finally:
        await store.close()
        hasher.close()


def _user_row(user: User) -> dict[str, Any]:
    return {
        "user_id": user.user_id, "name": user.name, "customer": user.customer,
        "role": user.role.value,
        "state": "disabled" if user.disabled else "locked" if user.locked else
        "must-change" if user.must_change else "active",
        "failures": user.failed_attempts,
        "password_set": _when(user.password_set_at),
        "last_login": _when(user.last_login_at),
    }


async def cmd_users_add(config: GatewayConfig, clock: Clock, args: argparse.Namespace) -> int:
    """Create a user; print the welcome letter (temporary + acquisition password) once."""

    async def run(store: UserBackend, auth: Authenticator) -> int:
        ca = ca_client_for(config)
        try:
            user, temporary = await auth.add_user(args.user_id, name=args.name,
                                                  customer=args.customer, role=args.role,
                                                  actor=_helpdesk(args))
            print(f"user {user.user_id} ({user.name}, {user.customer}, {user.role.value}) created")
            print(f"  temporary login password: {temporary}")
            try:
                acquisition = await ca.issue_acquisition_password(user.user_id,
                                                                  actor=_helpdesk(args))
            except (CaUnavailable, CaRefused) as exc:
                raise CliError(
                    f"the user was created but the CA did not issue an acquisition password "
                    f"({exc}); run `sekisho-ca acquisition-password {user.user_id}`") from None
            print(f"  certificate acquisition password: {acquisition}")
            print("Both are shown only this once: put them in the welcome letter.")
        finally:
            await ca.close()
        return 0

    return await _with_users(config, clock, run)


async def cmd_users_reset(config: GatewayConfig, clock: Clock, args: argparse.Namespace) -> int:
    """§2.6: a new temporary password (also unlocks); printed once."""

    async def run(store: UserBackend, auth: Authenticator) -> int:
        temporary = await auth.reset_password(args.user_id, actor=_helpdesk(args))
        print(f"user {args.user_id}: new temporary login password: {temporary}")
        print("It is shown only this once. The user must change it at the next login.")
        print("Any session of the user has been ended.")
        return 0

    return await _with_users(config, clock, run)


async def cmd_users_unlock(config: GatewayConfig, clock: Clock, args: argparse.Namespace) -> int:
    """§2.7: unlock a user locked after three wrong passwords."""

    async def run(store: UserBackend, auth: Authenticator) -> int:
        if await store.unlock(args.user_id, actor=_helpdesk(args)):
            print(f"user {args.user_id} unlocked")
        else:
            print(f"user {args.user_id} is not locked: nothing changed")
        return 0

    return await _with_users(config, clock, run)


async def cmd_users_disable(config: GatewayConfig, clock: Clock, args: argparse.Namespace) -> int:
    """Disable a user (it then logs in like an unknown user ID)."""

    async def run(store: UserBackend, auth: Authenticator) -> int:
        await store.disable(args.user_id, actor=_helpdesk(args))
        print(f"user {args.user_id} disabled; any session of the user has been ended "
              f"(revoke the certificate with `sekisho-ca revoke --user {args.user_id}`)")
        return 0

    return await _with_users(config, clock, run)


async def cmd_users_show(config: GatewayConfig, clock: Clock, args: argparse.Namespace) -> int:
    """Show one user."""

    async def run(store: UserBackend, auth: Authenticator) -> int:
        user = await store.get(args.user_id)
        if user is None:
            raise CliError(f"no user {args.user_id}")
        for key, value in _user_row(user).items():
            print(f"{key:13} {value}")
        return 0

    return await _with_users(config, clock, run)


async def cmd_users_list(config: GatewayConfig, clock: Clock, args: argparse.Namespace) -> int:
    """List every user."""

    async def run(store: UserBackend, auth: Authenticator) -> int:
        rows = [_user_row(u) for u in await store.list_users()]
        columns = ("user_id", "name", "customer", "role", "state", "failures", "last_login")
        for line in table(columns, [[str(r[c]) for c in columns] for r in rows]):
            print(line)
        return 0

    return await _with_users(config, clock, run)


async def cmd_audit_verify(config: GatewayConfig, clock: Clock, args: argparse.Namespace) -> int:
    """Verify the gateway's audit hash chain (R-OPS-2): exit 1 naming the damaged rows."""

    async def run(store: UserBackend, auth: Authenticator) -> int:
        problems = await store.verify_audit()
        for problem in problems:
            print(f"audit chain damaged: {problem}")
        if problems:
            return 1
        print("audit chain intact")
        return 0

    return await _with_users(config, clock, run)


def _parse_time(value: str) -> datetime:
    """A date (a day in Japan time, as the helpdesk reads the trail) or an ISO time."""
    try:
        if len(value) == 10:  # 2026-12-04
            return datetime.fromisoformat(value).replace(tzinfo=JST).astimezone(UTC)
        return to_utc_datetime(value, "time")
    except (ConfigError, ValueError):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a date or time (e.g. 2026-12-04 or 2026-12-04T09:00+09:00)"
        ) from None


async def cmd_audit_show(config: GatewayConfig, clock: Clock, args: argparse.Namespace) -> int:
    """Audit entries, oldest first, filtered; times in JST and UTC."""

    async def run(store: UserBackend, auth: Authenticator) -> int:
        entries = await store.search_audit(
            subject=args.user, action=args.action, actor=args.operator_name,
            since=args.since, until=args.until, limit=args.limit)
        if args.json:
            print(json.dumps([entry.__dict__ for entry in entries], ensure_ascii=False,
                             indent=2))
            return 0
        rows = [[str(e.id), _when(datetime.fromisoformat(e.at)), e.actor, e.action, e.subject,
                 json.dumps(e.details, ensure_ascii=False) if e.details else ""]
                for e in entries]
        for line in table(("id", "at", "actor", "action", "subject", "details"), rows):
            print(line)
        return 0

    return await _with_users(config, clock, run)


# -- db (issue 12) -------------------------------------------------------------------------

# What `db copy` moves, parents before children, and the counter rows it sets afterwards.
_COPIED_TABLES = ("users", "password_history", "unknown_attempts", "sessions", "pickups",
                  "session_events", "audit_log")


def _sqlite_version(path: Path) -> int:
    """The schema version of a SQLite file before it is opened (0: new or empty)."""
    if not path.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as raw:
        try:
            row = raw.execute("SELECT version FROM schema_version").fetchone()
        except sqlite3.OperationalError:
            return 0
    return int(row[0]) if row else 0


async def _version_of(config: GatewayConfig) -> int:
    if config.postgres is None:
        return _sqlite_version(config.database)
    conn = await config.postgres.connect()
    try:
        return await pg_schema_version(conn)
    finally:
        await conn.close()


async def cmd_db_migrate(config: GatewayConfig, clock: Clock, args: argparse.Namespace) -> int:
    """Bring the configured store to this program's schema version (both backends)."""
    before = await _version_of(config)
    store = await open_user_store(config, clock)
    await store.close()
    after = await _version_of(config)
    print(f"{config.store_name}: schema version {before} -> {after}"
          if after != before else f"{config.store_name}: schema version {after}, up to date")
    return 0


async def cmd_db_status(config: GatewayConfig, clock: Clock, args: argparse.Namespace) -> int:
    """Backend, place, schema version (applied / this program's), users, audit rows."""
    version = await _version_of(config)
    print(f"backend        {'postgresql' if config.postgres is not None else 'sqlite'}")
    print(f"database       {config.store_name}")
    print(f"schema version {version} (this program: {len(MIGRATIONS)})")
    if version != len(MIGRATIONS):
        print("run `sekisho-gateway db migrate`" if version < len(MIGRATIONS)
              else "the database is newer than this program: upgrade Sekisho")
        return 1
    store = await open_user_store(config, clock)
    try:
        users = await store.list_users()
        problems = await store.verify_audit()
        entries = await store.audit_entries(limit=1)
    finally:
        await store.close()
    print(f"users          {len(users)} ({sum(u.locked for u in users)} locked)")
    print(f"audit chain    {entries[-1].id if entries else 0} entries, "
          f"{'intact' if not problems else 'DAMAGED: ' + '; '.join(problems)}")
    return 0 if not problems else 1


async def cmd_db_copy(config: GatewayConfig, clock: Clock, args: argparse.Namespace) -> int:
    """Copy the embedded SQLite store into an empty PostgreSQL database (issue 12): users,
    password history, lockout state and pending tries, sessions (nobody is logged out) and
    their events, and the audit chain,
    row by row in one transaction, then verify the chain and the counts on the target."""
    from gateway.users_pg import PgUserStore

    if config.postgres is not None:
        raise CliError("gateway.database is already a PostgreSQL DSN: db copy moves an "
                       "embedded (SQLite) install to PostgreSQL")
    try:
        target_settings = PostgresSettings(
            args.to, password_file=args.password_file, password_env=args.password_env,
            application_name="sekisho-gateway:copy")
    except PostgresConfigError as exc:
        raise CliError(f"--to: {exc}") from None
    source = await UserStore.open(config.database, clock)  # migrated to the newest version
    await source.close()
    problems = await asyncio.to_thread(_sqlite_audit_problems, config.database)
    if problems:
        raise CliError(f"the source audit chain is damaged ({problems[0]}); not copied")
    tables = await asyncio.to_thread(_read_sqlite_tables, config.database)
    target = await PgUserStore.open(target_settings, clock)
    try:
        conn = await target_settings.connect()
        try:
            async with conn.transaction():
                if await conn.fetchval("SELECT count(*) FROM users") or \
                        await conn.fetchval("SELECT id FROM audit_head"):
                    raise CliError(f"{args.to} already holds gateway data; copy only into an "
                                   "empty database")
                for name in _COPIED_TABLES:
                    columns, rows = tables[name]
                    if rows:
                        await conn.copy_records_to_table(name, records=rows, columns=columns)
                await conn.execute(
                    "SELECT setval(pg_get_serial_sequence('password_history', 'id'),"
                    " GREATEST((SELECT max(id) FROM password_history), 1))")
                await conn.execute("UPDATE counters SET value = $1 WHERE name = "
                                   "'session_events'", tables["session_events_seq"][1][0][0])
                last = tables["audit_head"][1]
                if last:
                    await conn.execute("UPDATE audit_head SET id = $1, hash = $2", *last[0])
        finally:
            await conn.close()
        problems = await target.verify_audit()
        copied = {name: len(tables[name][1]) for name in _COPIED_TABLES}
        if problems:
            raise CliError(f"the copied audit chain does not verify: {problems[0]}")
    finally:
        await target.close()
    print(f"copied {config.database} to {args.to}: " +
          ", ".join(f"{count} {name}" for name, count in copied.items()))
    print("audit chain verified on the target. Now set gateway.database to the DSN "
          "(and database_password_file) and restart the gateway.")
    return 0


def _sqlite_audit_problems(path: Path) -> list[str]:
    async def verify() -> list[str]:
        async with aiosqlite.connect(path) as db:
            return await audit.verify_chain(db)

    return asyncio.run(verify())


def _read_sqlite_tables(path: Path) -> dict[str, tuple[list[str], list[tuple[Any, ...]]]]:
    """Every copied table as (column names, rows), read in one read transaction; plus the
    audit head (highest id ever written and the hash of the newest row) and the session
    event sequence."""
    result: dict[str, tuple[list[str], list[tuple[Any, ...]]]] = {}
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as raw:
        raw.execute("BEGIN")
        for name in _COPIED_TABLES:
            cursor = raw.execute(f"SELECT * FROM {name}")  # noqa: S608 - constant names
            columns = [column[0] for column in cursor.description]
            result[name] = (columns, [tuple(row) for row in cursor.fetchall()])
        highest = raw.execute(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'audit_log'), 0)"
        ).fetchone()[0]
        newest = raw.execute("SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1").fetchone()
        result["audit_head"] = (["id", "hash"], [(int(highest), newest[0])] if newest else [])
        seq = raw.execute("SELECT COALESCE(MAX(seq), 0) FROM session_events").fetchone()[0]
        events = raw.execute(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'session_events'),"
            " 0)").fetchone()[0]
        result["session_events_seq"] = (["value"], [(max(int(seq), int(events)),)])
        raw.execute("COMMIT")
    return result


def _workers_option(value: str) -> int:
    try:
        return parse_workers(value, "--workers")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(prog="sekisho-gateway", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--workers", type=_workers_option, default=None,
                       help="worker processes, a number or auto (default: gateway.workers)")
    serve.set_defaults(handler=cmd_serve)
    commands.add_parser("tls-init", help="create the demo server certificate").set_defaults(
        handler=cmd_tls_init)
    users = commands.add_parser("users", help="helpdesk: manage users").add_subparsers(
        dest="users_command", required=True)
    add = users.add_parser("add", help="create a user and print the welcome letter")
    add.add_argument("user_id")
    add.add_argument("--name", required=True, help="user name (ユーザ名)")
    add.add_argument("--customer", required=True, help="customer name (お客様名)")
    add.add_argument("--role", required=True, choices=("admin", "contractor"))
    add.set_defaults(handler=cmd_users_add)
    for name, handler, text in (
        ("reset-password", cmd_users_reset, "issue a new temporary password (also unlocks)"),
        ("unlock", cmd_users_unlock, "unlock after three wrong passwords"),
        ("disable", cmd_users_disable, "disable a user"),
        ("show", cmd_users_show, "show one user"),
    ):
        command = users.add_parser(name, help=text)
        command.add_argument("user_id")
        command.set_defaults(handler=handler)
    users.add_parser("list", help="list users").set_defaults(handler=cmd_users_list)
    audit = commands.add_parser("audit", help="the gateway's audit trail").add_subparsers(
        dest="audit_command", required=True)
    audit.add_parser("verify", help="verify the audit hash chain").set_defaults(
        handler=cmd_audit_verify)
    show = audit.add_parser("show", help="show audit entries, filtered")
    show.add_argument("--user", help="entries about this user ID")
    show.add_argument("--action", help="an action or family (e.g. login, password.reset)")
    show.add_argument("--operator-name", help="entries by this actor (e.g. alice)")
    show.add_argument("--since", type=_parse_time,
                      help="from this day (Japan time) or ISO time, inclusive")
    show.add_argument("--until", type=_parse_time,
                      help="up to this day (Japan time) or ISO time, exclusive")
    show.add_argument("--limit", type=int, default=100, help="newest N entries (default 100)")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=cmd_audit_show)
    db = commands.add_parser("db", help="the gateway's store (SQLite or PostgreSQL)"
                             ).add_subparsers(dest="db_command", required=True)
    db.add_parser("migrate", help="apply the schema migrations").set_defaults(
        handler=cmd_db_migrate)
    db.add_parser("status", help="backend, schema version, users, audit chain").set_defaults(
        handler=cmd_db_status)
    copy = db.add_parser("copy", help="copy the embedded store into an empty PostgreSQL")
    copy.add_argument("--to", required=True, metavar="DSN",
                      help="postgresql:// DSN of the target (no password in it)")
    source = copy.add_mutually_exclusive_group()
    source.add_argument("--password-file", type=Path, help="the target's password (chmod 600)")
    source.add_argument("--password-env", help="environment variable holding the password")
    copy.set_defaults(handler=cmd_db_copy)
    add_common_options(parser)
    return parser


def main(argv: Sequence[str] | None = None, *, clock: Clock | None = None) -> int:
    """Entry point of `sekisho-gateway`."""
    restrict_new_files()  # password hashes (database, WAL), TLS key: owner-only
    args = build_parser().parse_args(argv)
    try:
        config = load_gateway_config(config_path(args))
        configure_logging(config.log_level if args.command == "serve" else "warning",
                          process="gateway")
        if args.command == "serve" and not supervisor.is_worker():
            workers = args.workers or config.workers
            if workers > 1:
                return supervise(config, config_path(args), workers, clock or SystemClock())
        with asyncio.Runner(loop_factory=loop_factory(args.command)) as runner:
            return int(runner.run(args.handler(config, clock or SystemClock(), args)))
    except (GatewayError, ConfigError, CliError, ValueError, OSError) as exc:
        print(f"sekisho-gateway: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
