"""`sekisho-ca`: the security officer's command line (R-CERT-5, R-CERT-7, R-OPS-*).

Every failure is one line on stderr and a non-zero exit: 1 for a refused or failed operation,
2 for a usage error (argparse), never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca import key_commands
from ca.api.views import certificate_view
from ca.config import CaConfig, load_ca_config
from ca.crl import REASONS
from ca.errors import BadRequest, CaError
from ca.issuance import parse_reason, parse_serial
from ca.runtime import CaRuntime, create_api_token, open_hierarchy
from ca.storage import open_store, postgres_settings
from ca.store import CertRecord, Store
from ca.store_pg import PgStore
from common import faults
from common.cli import add_common_options, config_path, operator_name
from common.config import ConfigError, load_raw, parse_duration, resolve_path, to_utc_datetime
from common.errors import Unavailable
from common.eventloop import loop_factory
from common.files import restrict_new_files
from common.logging import configure_logging
from common.postgres import PostgresConfigError, PostgresSettings
from keys.custody import close_keystore
from keys.errors import KeyCustodyError
from keys.file_signer import write_owner_only
from policy.clock import Clock, SystemClock
from policy.errors import PolicyViolation

OFFICER = "officer"


def _officer(args: argparse.Namespace) -> str:
    """The audit actor of an officer command: `officer:<operator>` (issue 15 item 14)."""
    return f"{OFFICER}:{operator_name(args)}"


class CliError(Exception):
    """A failure to report as one line."""


def _print_table(rows: list[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> None:
    widths = [max([len(title), *(len(str(row[key] or "")) for row in rows)])
              for key, title in columns]
    print("  ".join(title.ljust(w) for (_, title), w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(str(row[key] or "-").ljust(w)
                        for (key, _), w in zip(columns, widths, strict=True)))


# -- commands ------------------------------------------------------------------------------


async def cmd_init(config: CaConfig, clock: Clock, args: argparse.Namespace) -> int:
    """Create the root, generation g1, its OCSP responder, the store and the API token."""
    if args.generate_passphrase and not config.keys.passphrase_file.exists():
        write_owner_only(config.keys.passphrase_file, secrets.token_urlsafe(32).encode())
    hierarchy = open_hierarchy(config)
    try:
        generation = hierarchy.init(
            clock.now(), root_algorithm=config.keys.root_algorithm,
            generation_algorithm=config.keys.generation_algorithm,
            ocsp_validity=config.ocsp_responder_validity,
        )
    finally:
        close_keystore(hierarchy.keystore)
    store = await open_store(config)
    try:
        await store.audit(at=clock.now(), actor=_officer(args), action="ca.initialised",
                          subject=generation.name,
                          details={"root": format(hierarchy.root_certificate().serial_number, "x")})
    finally:
        await store.close()
    if not config.api_token_file.exists():
        create_api_token(config.api_token_file)
    print(f"CA initialised in {config.keys.directory}: root, issuing generation "
          f"{generation.name}, OCSP responder {generation.name}-ocsp")
    print(f"internal API token: {config.api_token_file} (mode 0600)")
    return 0


async def cmd_serve(config: CaConfig, clock: Clock, args: argparse.Namespace) -> int:
    """Run the daemon until interrupted."""
    from ca.daemon import serve

    await serve(config, clock)
    return 0


async def _with_runtime(
    config: CaConfig, clock: Clock, action: Callable[[CaRuntime], Awaitable[int]]
) -> int:
    runtime = await CaRuntime.open(config, clock, workers=1, publishing=False)
    try:
        return await action(runtime)
    finally:
        await runtime.close()


async def _gateway_user_row_pg(path: Path, dsn: str, user_id: str) -> tuple[Any, ...] | None:
    """(disabled,) of the user in the gateway's PostgreSQL store (issue 12), None when absent;
    the password from the gateway's own password file or variable, as the gateway reads it."""
    from common.postgres import PostgresSettings  # asyncpg only when configured

    raw = load_raw(path)
    gateway = raw.section("gateway")
    settings = PostgresSettings(
        dsn, password_file=(resolve_path(raw.base_dir, str(gateway.values[
            "database_password_file"])) if "database_password_file" in gateway.values
            else None),
        password_env=gateway.values.get("database_password_env"),
        application_name="sekisho-ca:user-check")
    conn = await settings.connect()
    try:
        row = await conn.fetchrow("SELECT disabled FROM users WHERE user_id = $1", user_id)
    finally:
        await conn.close()
    return tuple(row) if row is not None else None


async def _require_gateway_user(path: Path, user_id: str) -> None:
    """Refuse an acquisition password for a user ID the gateway does not know (or has
    disabled): the customer could never log in with the certificate (issue 15 item 15).

    The gateway's user table is read directly, read-only, from `gateway.database` of the same
    config file (the CA imports nothing of the gateway): the SQLite file, or the PostgreSQL
    database of a `postgresql://` DSN. When it cannot be read here (the gateway runs on
    another host), a warning says the check was skipped.
    """
    raw = load_raw(path)
    value = str(raw.section("gateway").values.get("database", "var/gateway/gateway.sqlite3"))
    if value.startswith(("postgresql:", "postgres:")):
        try:
            pg_row = await _gateway_user_row_pg(path, value, user_id)
        except Exception as exc:  # unreachable, refused, a bad password file: said, skipped
            print(f"sekisho-ca: warning: cannot read the gateway's users in {value} ({exc}); "
                  f"make sure user {user_id} exists at the gateway", file=sys.stderr)
            return
        _refuse_unusable(user_id, value, pg_row)
        return
    database = resolve_path(raw.base_dir, value)
    try:
        with contextlib.closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True,
                                                timeout=10)) as db:
            row = db.execute("SELECT disabled FROM users WHERE user_id = ?",
                             (user_id,)).fetchone()
    except sqlite3.Error as exc:
        print(f"sekisho-ca: warning: cannot read the gateway's users in {database} ({exc}); "
              f"make sure user {user_id} exists at the gateway", file=sys.stderr)
        return
    _refuse_unusable(user_id, str(database), row)


def _refuse_unusable(user_id: str, database: str, row: Any) -> None:
    if row is None:
        raise CliError(f"user {user_id} does not exist at the gateway ({database}), so this "
                       "acquisition password could never be used; create the user with "
                       "`sekisho-gateway users add` (it issues the acquisition password), "
                       "or pass --force")
    if row[0]:
        raise CliError(f"user {user_id} is disabled at the gateway; pass --force to issue "
                       "an acquisition password anyway")


async def cmd_acquisition_password(
    config: CaConfig, clock: Clock, args: argparse.Namespace
) -> int:
    """Issue or reissue a user's acquisition password and print it once."""

    if not args.force:
        await _require_gateway_user(config_path(args), args.user_id)

    async def run(runtime: CaRuntime) -> int:
        password = await runtime.authority.issue_acquisition_password(args.user_id,
                                                                      actor=_officer(args))
        print(f"acquisition password for {args.user_id}: {password}")
        print("It is shown only this once; hand it to the customer with the welcome letter.")
        return 0

    return await _with_runtime(config, clock, run)


async def cmd_issue(config: CaConfig, clock: Clock, args: argparse.Namespace) -> int:
    """Issue a certificate for USER_ID from a CSR file; print the certificate PEM."""
    try:
        csr_data = Path(args.csr).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read CSR {args.csr}: {exc.strerror}") from None

    async def run(runtime: CaRuntime) -> int:
        issued = await runtime.authority.issue_from_csr(
            args.user_id, csr_data, acquisition_password=None, actor=_officer(args)
        )
        record = issued.record
        pem = x509.load_der_x509_certificate(record.der or b"").public_bytes(
            serialization.Encoding.PEM
        )
        if args.output:
            Path(args.output).write_bytes(pem)
            print(f"issued {record.serial} for {record.user_id} -> {args.output}",
                  file=sys.stderr)
        else:
            sys.stdout.write(pem.decode())
        return 0

    return await _with_runtime(config, clock, run)


# A bulk revocation commits this many certificates per transaction: each batch holds SQLite's
# write lock for well under a second, so the daemon's acquisitions and revocations wait for at
# most one batch (R-FAULT-4). A short pause between batches lets waiting writers in (SQLite's
# busy handler polls, it does not queue).
BULK_BATCH_SIZE = 500
BULK_PAUSE_SECONDS = 0.05


async def _bulk_revoke(runtime: CaRuntime, args: argparse.Namespace) -> int:
    """Revoke every usable certificate issued before a date, optionally of one generation.

    In batches, each atomic; the whole is idempotent (already revoked certificates are
    skipped), so a run that was interrupted is finished by running the same command again.
    """
    issued_before = to_utc_datetime(args.issued_before, "--issued-before")
    reason = parse_reason(args.reason)
    now = runtime.clock.now()
    targets = [
        record for record in await runtime.store.list_certificates(
            generation=args.generation, issued_before=issued_before, unrevoked=True)
        if record.not_before < issued_before and record.not_after >= now
    ]
    users = sorted({record.user_id for record in targets})
    scope = f"issued before {issued_before:%Y-%m-%d %H:%M:%S}Z" + (
        f" by generation {args.generation}" if args.generation else "")
    if args.dry_run:
        print(f"dry run: would revoke {len(targets)} certificates of {len(users)} users "
              f"{scope} (reason {reason})")
        for user in users[:50]:
            print(f"  {user}")
        if len(users) > 50:
            print(f"  ... and {len(users) - 50} more users")
        return 0
    revoked = 0
    for start in range(0, len(targets), BULK_BATCH_SIZE):
        if start:
            await faults.reached("ca.bulk_between_batches")
            await asyncio.sleep(BULK_PAUSE_SECONDS)
        batch = targets[start:start + BULK_BATCH_SIZE]
        revoked += len(await runtime.authority.revoke_many(
            [r.serial for r in batch], reason, actor=_officer(args), details={"bulk": scope},
        ))
    await runtime.store.audit(at=now, actor=_officer(args), action="certificate.bulk_revoked",
                              subject=args.generation or "*",
                              details={"scope": scope, "reason": reason,
                                       "certificates": revoked, "users": len(users)})
    print(f"revoked {revoked} certificates of {len(users)} users {scope} (reason {reason})")
    return 0


async def cmd_revoke(config: CaConfig, clock: Clock, args: argparse.Namespace) -> int:
    """Revoke by serial, by user, or in bulk by issue date, with an RFC 5280 reason."""

    async def run(runtime: CaRuntime) -> int:
        if args.issued_before:
            return await _bulk_revoke(runtime, args)
        if args.dry_run:
            raise CliError("--dry-run goes with --issued-before")
        if args.serial:
            revoked = await runtime.authority.revoke_serial(args.serial, args.reason,
                                                            actor=_officer(args))
        else:
            revoked = await runtime.authority.revoke_user(args.user, args.reason,
                                                          actor=_officer(args))
        for record in revoked:
            print(f"revoked {record.serial} (user {record.user_id}, reason "
                  f"{record.revocation_reason}, at {record.revoked_at:%Y-%m-%d %H:%M:%S} UTC)")
        return 0

    return await _with_runtime(config, clock, run)


async def cmd_list(config: CaConfig, clock: Clock, args: argparse.Namespace) -> int:
    """List certificates as a table or JSON."""

    async def run(runtime: CaRuntime) -> int:
        states = ("issued", "intended", "abandoned") if args.all else ("issued", "intended")
        records = await runtime.store.list_certificates(user_id=args.user, states=states)
        views = [_view(runtime, r) for r in records]
        if args.status:
            views = [v for v in views if v["state"] == args.status]
        if args.json:
            print(json.dumps(views, indent=2))
            return 0
        if not views:
            print("no certificates match")
            return 0
        for view in views:
            for key in ("not_before", "not_after", "revoked_at"):
                if view[key]:
                    view[key] = view[key][:19].replace("T", " ")
        _print_table(views, [("serial", "SERIAL"), ("user_id", "USER"),
                             ("generation", "GEN"), ("state", "STATE"),
                             ("not_before", "NOT BEFORE (UTC)"), ("not_after", "NOT AFTER (UTC)"),
                             ("revocation_reason", "REASON")])
        return 0

    return await _with_runtime(config, clock, run)


def _view(runtime: CaRuntime, record: CertRecord) -> dict[str, Any]:
    """A row for list/show; a row that is not issued shows why (R-FAULT-2): "intended" while
    its request may still finish, "intended (stale)" once it cannot (settled by the daemon
    within seconds), "abandoned" (never delivered; revoked if it was ever signed)."""
    if record.state == "issued":
        return certificate_view(record, runtime.authority.state_of(record))
    state = record.state
    if record.stale(runtime.clock.now()):
        state = "intended (stale)"
    if record.revoked_at is not None:
        state += ", revoked"
    return certificate_view(record, state)


async def cmd_show(config: CaConfig, clock: Clock, args: argparse.Namespace) -> int:
    """Show one certificate (or an intent that never became one) in detail."""

    async def run(runtime: CaRuntime) -> int:
        serial = parse_serial(args.serial)
        record = await runtime.store.get(serial)
        if record is None:
            raise CliError(f"no certificate with serial {serial}")
        for key, value in _view(runtime, record).items():
            print(f"{key:20} {value if value is not None else '-'}")
        if record.state != "issued":
            deadline = f"{record.deadline:%Y-%m-%d %H:%M:%S} UTC" if record.deadline else "-"
            print(f"{'owner':20} {record.owner or '-'}")
            print(f"{'deadline':20} {deadline}")
        if record.der is not None:
            certificate = x509.load_der_x509_certificate(record.der)
            print(certificate.public_bytes(serialization.Encoding.PEM).decode(), end="")
        return 0

    return await _with_runtime(config, clock, run)


async def cmd_audit_verify(config: CaConfig, clock: Clock, args: argparse.Namespace) -> int:
    """Check the audit chain; exit 1 when it was tampered with."""
    store = await open_store(config)
    try:
        problems = await store.verify_audit()
        count = len(await store.audit_entries(limit=10**9))
    finally:
        await store.close()
    if problems:
        for problem in problems:
            print(f"audit log damaged: {problem}")
        return 1
    print(f"audit log intact: {count} entries, hash chain verified")
    return 0


async def cmd_crl(config: CaConfig, clock: Clock, args: argparse.Namespace) -> int:
    """Write the current CRL of a generation (DER) to a file or stdout."""

    async def run(runtime: CaRuntime) -> int:
        if args.generation not in runtime.issuers.generations:
            raise CliError(f"no issuing generation {args.generation!r}")
        published = await runtime.crls.load(args.generation)
        if published is None:  # the daemon never ran: sign the first one here
            published = await runtime.crls.publish(args.generation)
        if args.output:
            Path(args.output).write_bytes(published.der)
            print(f"CRL {args.generation} number {published.number}, {published.entries} "
                  f"entries, nextUpdate {published.next_update:%Y-%m-%d %H:%M:%S}Z -> "
                  f"{args.output}", file=sys.stderr)
        else:
            sys.stdout.buffer.write(published.der)
        return 0

    return await _with_runtime(config, clock, run)


def run_check_crl(args: argparse.Namespace, clock: Clock) -> int:
    """Nagios-style CRL freshness check; never raises (exit 3 = UNKNOWN)."""
    from ca.check_crl import UNKNOWN, CheckResult, evaluate, fetch, issuers_from, load_issuers

    try:
        warn = parse_duration(args.warn, "--warn")
        crit = parse_duration(args.crit, "--crit")
        if args.issuer:  # a monitoring host: no config.toml, no key folder
            issuers = [cert for source in args.issuer for cert in issuers_from(source)]
        else:
            issuers = load_issuers(load_ca_config(config_path(args)).keys.directory)
        result = evaluate(fetch(args.url), issuers, clock.now(), warn, crit)
    except (OSError, ConfigError, ValueError) as exc:
        result = CheckResult(UNKNOWN, str(exc))
    print(result.line())
    return result.code


async def cmd_issuer_new(config: CaConfig, clock: Clock, args: argparse.Namespace) -> int:
    """Create the next issuing generation under the same root."""
    hierarchy = open_hierarchy(config)
    try:
        generation = hierarchy.new_generation(clock.now(), algorithm=args.algorithm,
                                              ocsp_validity=config.ocsp_responder_validity)
    finally:
        close_keystore(hierarchy.keystore)
    store = await open_store(config)
    try:
        await store.audit(at=clock.now(), actor=_officer(args), action="issuer.created",
                          subject=generation.name, details={"algorithm": args.algorithm})
    finally:
        await store.close()
    print(f"created issuing generation {generation.name} ({args.algorithm}) with OCSP responder "
          f"{generation.name}-ocsp")
    print(f"next: set [generations.{generation.name}] issues_from (and retire_at of the old one) "
          "in the config, then restart the CA and the gateway")
    return 0


async def cmd_issuer_list(config: CaConfig, clock: Clock, args: argparse.Namespace) -> int:
    """List the issuing generations and their dates."""

    async def run(runtime: CaRuntime) -> int:
        now = clock.now()
        active = runtime.issuers.for_issuance(now).name
        rows = []
        for name, generation in runtime.issuers.generations.items():
            dates = runtime.issuers.schedule(name)
            rows.append({
                "name": name + (" *" if name == active else ""),
                "algorithm": generation.certificate.public_key().curve.name,  # type: ignore[union-attr]
                "issues_from": f"{dates.issues_from:%Y-%m-%d %H:%M%z}" if dates.issues_from else "",
                "retire_at": f"{dates.retire_at:%Y-%m-%d %H:%M%z}" if dates.retire_at else "",
                "not_after": f"{generation.certificate.not_valid_after_utc:%Y-%m-%d}",
            })
        _print_table(rows, [("name", "GENERATION"), ("algorithm", "KEY"),
                            ("issues_from", "ISSUES FROM"), ("retire_at", "RETIRED FROM"),
                            ("not_after", "CA EXPIRES")])
        print("* issues new certificates now")
        return 0

    return await _with_runtime(config, clock, run)


async def cmd_campaign_status(config: CaConfig, clock: Clock, args: argparse.Namespace) -> int:
    """Affected users, who has re-acquired and when, who has not (R-CUT-1)."""
    from ca.campaign import campaign_status

    cutovers = [c for c in config.cutovers if args.cutover in (None, c.name)]
    if not cutovers:
        raise CliError("no cutover is configured" if args.cutover is None
                       else f"no cutover named {args.cutover!r}")

    async def run(runtime: CaRuntime) -> int:
        certificates = await runtime.store.list_certificates()
        csv_parts = []
        for cutover in cutovers:
            status = campaign_status(cutover, certificates)
            print(f"cutover {cutover.name}: effective {cutover.effective_at:%Y-%m-%d %H:%M%z}"
                  + (f", issued before {cutover.issued_before:%Y-%m-%d %H:%M%z}"
                     if cutover.issued_before else "")
                  + (f", generation {cutover.generation}" if cutover.generation else ""))
            print(f"  affected users: {status.affected}  re-acquired: {status.reacquired}  "
                  f"not yet: {status.pending}")
            pending = [u.user_id for u in status.users if u.reacquired_serial is None]
            if pending and not args.csv:
                shown = ", ".join(pending[:20]) + (" ..." if len(pending) > 20 else "")
                print(f"  not yet re-acquired: {shown}")
            csv_parts.append(status.csv())
        if args.csv:
            header, *_ = csv_parts[0].splitlines(keepends=True)
            body = "".join("".join(part.splitlines(keepends=True)[1:]) for part in csv_parts)
            Path(args.csv).write_text(header + body)
            print(f"per-user rows written to {args.csv}")
        await runtime.store.audit(at=clock.now(), actor=_officer(args),
                                  action="campaign.status_viewed",
                                  subject=",".join(c.name for c in cutovers))
        return 0

    return await _with_runtime(config, clock, run)


# -- database --------------------------------------------------------------------------------


def _describe_database(config: CaConfig) -> str:
    """Where the store is, for the operator (a DSN never holds a password: check_dsn)."""
    return (f"PostgreSQL {config.database_dsn}" if config.database_dsn
            else f"SQLite {config.database}")


async def cmd_db_migrate(config: CaConfig, clock: Clock, args: argparse.Namespace) -> int:
    """Bring the CA database's schema up to date (both backends; issue 13)."""
    settings = postgres_settings(config)
    if settings is None:
        before = 0
        if config.database.exists():
            with contextlib.closing(sqlite3.connect(
                    f"{config.database.as_uri()}?mode=ro", uri=True)) as db, \
                    contextlib.suppress(sqlite3.OperationalError):
                before = int(db.execute("SELECT version FROM schema_version").fetchone()[0])
        store = await Store.open(config.database)
        try:
            after, _known = await store.schema_status()
        finally:
            await store.close()
    else:
        pg = await PgStore.open(settings, migrate_schema=False)
        try:
            before, after = await pg.migrate()
        finally:
            await pg.close()
    print(f"{_describe_database(config)}: schema version {before} -> {after}"
          + (" (already current)" if before == after else ""))
    return 0


async def cmd_db_status(config: CaConfig, clock: Clock, args: argparse.Namespace) -> int:
    """Which database, its schema version, the revocation sequence and CRL numbers; exit 1
    when the schema is behind this program (run `db migrate`)."""
    settings = postgres_settings(config)
    store = (await PgStore.open(settings, migrate_schema=False) if settings
             else await Store.open(config.database))
    try:
        applied, known = await store.schema_status()
        print(f"database:        {_describe_database(config)}")
        print(f"schema version:  {applied} (this program: {known})")
        if applied < known:
            print("the schema is behind: run `sekisho-ca db migrate`")
            return 1
        print(f"revocation seq:  {await store.last_revocation_seq()}")
        for generation in config.generations:
            print(f"CRL number {generation}: {await store.crl_number(generation)}")
    finally:
        await store.close()
    return 0


async def cmd_db_copy(config: CaConfig, clock: Clock, args: argparse.Namespace) -> int:
    """Copy the configured CA database into an empty PostgreSQL database (issue 13):
    certificates, acquisition secrets, CRL numbers and state, the audit chain (verified
    before and after). Stop the CA daemon first: writes made during the copy are not moved."""
    try:
        target_settings = PostgresSettings(
            dsn=args.to, password_file=Path(args.password_file) if args.password_file else None,
            password_env=args.password_env, application_name="sekisho-ca-cli:db-copy")
    except PostgresConfigError as exc:
        raise CliError(str(exc)) from None
    source = await open_store(config)
    try:
        problems = await source.verify_audit()
        if problems:
            raise CliError("the source audit chain is damaged (" + "; ".join(problems[:3])
                           + "); nothing copied: run `sekisho-ca audit verify`")
        tables = await source.export_rows()
    finally:
        await source.close()
    target = await PgStore.open(target_settings)
    try:
        try:
            await target.import_rows(tables)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        copied = await target.export_rows()
        problems = await target.verify_audit()
    finally:
        await target.close()
    # Compared as sets: the two databases may order text differently (collations).
    if problems or any(set(copied[table]) != set(rows) or len(copied[table]) != len(rows)
                       for table, rows in tables.items()):
        print("sekisho-ca: error: the copy does not match its source:", "; ".join(problems)
              or "rows differ", file=sys.stderr)
        return 1
    for table, rows in tables.items():
        print(f"{table:20} {len(rows)} rows copied")
    print("audit chain verified on the target; set ca.database to the DSN (and "
          "database_password_file or database_password_env) and start the CA nodes")
    return 0


async def cmd_cluster_status(config: CaConfig, clock: Clock, args: argparse.Namespace) -> int:
    """The CA nodes connected to the shared PostgreSQL and which one leads each leader job
    with its fencing term (issue 13); exit 1 when a job has no leader (e.g. no CRL is being
    signed)."""
    from ca.leadership import CRL_JOB, JOBS

    settings = postgres_settings(config)
    if settings is None:
        print(f"one node: {_describe_database(config)} (no cluster)")
        return 0
    store = await PgStore.open(settings, migrate_schema=False)
    try:
        leaders, nodes = await store.cluster_status(JOBS)
        terms = await store.leader_terms()
    finally:
        await store.close()
    print(f"database:    {_describe_database(config)}")
    print(f"nodes:       {', '.join(nodes) or '-'}")
    print(f"CRL leader:  {leaders[CRL_JOB] or 'none (no node signs CRLs now)'}")
    print("leader jobs:")
    for job in JOBS:
        term = f" (term {terms[job][0]})" if job in terms else ""
        print(f"  {job:16} {leaders[job] or 'none'}{term}")
    return 0 if all(leaders.values()) else 1


# -- parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every sub-command."""
    parser = argparse.ArgumentParser(prog="sekisho-ca", description="Sekisho certificate authority")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    init = commands.add_parser("init", help="create the root, issuing CA g1 and OCSP responder")
    init.add_argument("--generate-passphrase", action="store_true",
                      help="create a random key passphrase file if none exists (demo set-up)")
    init.set_defaults(handler=cmd_init)

    commands.add_parser("serve", help="run the CA daemon").set_defaults(handler=cmd_serve)

    acq = commands.add_parser("acquisition-password",
                              help="issue or reissue a user's acquisition password")
    acq.add_argument("user_id")
    acq.add_argument("--force", action="store_true",
                     help="issue even when the gateway does not know the user (yet)")
    acq.set_defaults(handler=cmd_acquisition_password)

    issue = commands.add_parser("issue", help="issue a certificate from a CSR")
    issue.add_argument("user_id")
    issue.add_argument("--csr", required=True, help="PKCS#10 request, PEM or DER")
    issue.add_argument("--output", help="write the certificate PEM here instead of stdout")
    issue.set_defaults(handler=cmd_issue)

    revoke = commands.add_parser("revoke", help="revoke certificates by serial or by user")
    target = revoke.add_mutually_exclusive_group(required=True)
    target.add_argument("--serial", help="certificate serial number (hex)")
    target.add_argument("--user", help="revoke every usable certificate of this user")
    target.add_argument("--issued-before", metavar="DATE",
                        help="bulk: every usable certificate issued before DATE "
                             "(ISO date or datetime; an offset such as +09:00 means local time)")
    revoke.add_argument("--generation", help="bulk: only this issuing generation")
    revoke.add_argument("--dry-run", action="store_true",
                        help="bulk: show what would be revoked, change nothing")
    revoke.add_argument("--reason", required=True,
                        help="RFC 5280 reason: " + ", ".join(REASONS))
    revoke.set_defaults(handler=cmd_revoke)

    listing = commands.add_parser("list", help="list certificates")
    listing.add_argument("--user")
    listing.add_argument("--status", choices=["valid", "expired", "revoked", "not_yet_valid",
                                              "cut_over", "intended", "intended (stale)",
                                              "abandoned"])
    listing.add_argument("--all", action="store_true",
                         help="also abandoned rows (intents that were never delivered)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=cmd_list)

    show = commands.add_parser("show", help="show one certificate")
    show.add_argument("serial")
    show.set_defaults(handler=cmd_show)

    crl = commands.add_parser("crl", help="write the current CRL (DER)")
    crl.add_argument("--generation", default="g1")
    crl.add_argument("--output", help="file to write (default: stdout)")
    crl.set_defaults(handler=cmd_crl)

    check = commands.add_parser("check-crl", help="monitoring check of a published CRL")
    check.add_argument("url")
    check.add_argument("--issuer", action="append", metavar="FILE_OR_URL",
                       help="issuing CA certificate(s) (PEM or DER file, or http(s) URL such as "
                            "<public_url>/certs/bundle.pem); without it, those of config.toml")
    check.add_argument("--warn", default="6h", help="WARNING when nextUpdate is this close")
    check.add_argument("--crit", default="1h", help="CRITICAL when nextUpdate is this close")
    check.set_defaults(handler=None)

    issuer = commands.add_parser("issuer", help="issuing generations")
    issuer_sub = issuer.add_subparsers(dest="issuer_command", required=True, metavar="ACTION")
    new = issuer_sub.add_parser("new", help="create the next issuing generation")
    new.add_argument("--algorithm", choices=["p256", "p384"], default="p256")
    new.set_defaults(handler=cmd_issuer_new)
    issuer_sub.add_parser("list", help="list generations").set_defaults(handler=cmd_issuer_list)

    campaign = commands.add_parser("campaign", help="re-issuance campaigns")
    campaign_sub = campaign.add_subparsers(dest="campaign_command", required=True,
                                           metavar="ACTION")
    status = campaign_sub.add_parser("status", help="who is affected and who has re-acquired")
    status.add_argument("--cutover", help="only this cutover (default: all)")
    status.add_argument("--csv", help="write one row per affected user to this file")
    status.set_defaults(handler=cmd_campaign_status)

    key_commands.add_parser(commands)

    audit_cmd = commands.add_parser("audit", help="audit log commands")
    audit_sub = audit_cmd.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    audit_sub.add_parser("verify", help="verify the audit hash chain").set_defaults(
        handler=cmd_audit_verify
    )

    db = commands.add_parser("db", help="the CA database (SQLite or PostgreSQL)")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_sub.add_parser("migrate", help="bring the schema up to date").set_defaults(
        handler=cmd_db_migrate)
    db_sub.add_parser("status", help="schema version, revocation sequence, CRL numbers"
                      ).set_defaults(handler=cmd_db_status)
    copy = db_sub.add_parser("copy", help="copy this CA's database into an empty PostgreSQL one")
    copy.add_argument("--to", required=True, metavar="DSN",
                      help="postgresql:// DSN of the target (no password in it)")
    password = copy.add_mutually_exclusive_group()
    password.add_argument("--password-file", help="the target's password, in a 0600 file")
    password.add_argument("--password-env", help="the variable holding the target's password")
    copy.set_defaults(handler=cmd_db_copy)

    cluster = commands.add_parser("cluster", help="the CA nodes on a shared PostgreSQL")
    cluster_sub = cluster.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")
    cluster_sub.add_parser(
        "status", help="connected nodes and each leader job's leader").set_defaults(
        handler=cmd_cluster_status)
    add_common_options(parser)
    return parser


def main(argv: Sequence[str] | None = None, *, clock: Clock | None = None) -> int:
    """Entry point of `sekisho-ca`."""
    restrict_new_files()  # keys, store, WAL, tokens: owner-only from their first byte
    args = build_parser().parse_args(argv)
    if args.command == "check-crl":
        return run_check_crl(args, clock or SystemClock())
    if args.command == "keys" and args.keys_command == "check":
        return key_commands.run_keys_check(args, clock or SystemClock())
    try:
        config = load_ca_config(config_path(args))
        configure_logging("warning" if args.command != "serve" else config.log_level,
                          process="ca")
        with asyncio.Runner(loop_factory=loop_factory(args.command)) as runner:
            return int(runner.run(args.handler(config, clock or SystemClock(), args)))
    except (CaError, PolicyViolation, KeyCustodyError, ConfigError, CliError, BadRequest,
            ValueError) as exc:
        code = f"{exc.code}: " if isinstance(exc, Unavailable) else ""
        print(f"sekisho-ca: error: {code}{exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
