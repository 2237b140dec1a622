"""`sekisho-gateway`: run the gateway, and the helpdesk's user commands (§2.6, §2.7).

    sekisho-gateway [--config config.toml] serve
    sekisho-gateway tls-init
    sekisho-gateway users add USER_ID --name NAME --customer CUSTOMER --role admin|contractor
    sekisho-gateway users reset-password USER_ID
    sekisho-gateway users unlock USER_ID
    sekisho-gateway users disable USER_ID
    sekisho-gateway users show USER_ID
    sekisho-gateway users list

Every failure is one line on stderr and exit status 1 (2 for a usage error), never a
traceback. Secrets (temporary and acquisition passwords) are printed once and never logged.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import stat
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from common.config import DEFAULT_CONFIG, ConfigError
from common.eventloop import loop_factory, until_stopped
from common.logging import configure_logging
from common.passwords import PasswordHasher
from common.tlsfiles import ensure_server_certificate, tls_client_context
from gateway.auth import Authenticator
from gateway.ca_client import CaClient, CaRefused, CaUnavailable
from gateway.config import GatewayConfig, load_gateway_config
from gateway.errors import GatewayError
from gateway.tls import TrustBundle, server_context
from gateway.trust import TrustAnchor, TrustAnchorError, write_cache
from gateway.users import User, UserStore
from policy.clock import Clock, SystemClock

HELPDESK = "helpdesk"


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
    """A CA client with the token from config."""
    internal_ssl = None
    if config.ca_internal_url.startswith("https://"):
        trust = config.ca_internal_trust
        if trust is not None and not trust.is_file():
            raise ConfigError(f"gateway.ca_internal_trust: {trust} does not exist; the CA makes "
                              "it on its first `serve` with ca.internal_tls (start the CA "
                              "first), or point it at the CA's internal certificate")
        internal_ssl = tls_client_context(trust)
    return CaClient(config.ca_internal_url, config.ca_public_url,
                    read_api_token(config.ca_api_token_file), internal_ssl=internal_ssl)


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
    users = await UserStore.open(config.database, clock)
    hasher = PasswordHasher()
    app = build_app(config, clock=clock, users=users, hasher=hasher, ca_client=ca,
                    bundle=bundle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    prepare_server(runner)
    try:
        site = web.TCPSite(runner, config.listen.host, config.listen.port,
                           ssl_context=context, backlog=1024)
        await site.start()
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
        await runner.cleanup()
        await users.close()
        hasher.close()
    return 0


async def cmd_tls_init(config: GatewayConfig, clock: Clock, args: argparse.Namespace) -> int:
    """Create the demo server certificate if it does not exist."""
    created = ensure_server_certificate(config.tls_cert, config.tls_key, config.public_url,
                                        clock)
    print(f"{'created' if created else 'kept existing'} {config.tls_cert} and {config.tls_key}")
    return 0


# -- users ----------------------------------------------------------------------------------


async def _with_users(config: GatewayConfig, clock: Clock,
                      action: Callable[[UserStore, Authenticator], Awaitable[int]]) -> int:
    store = await UserStore.open(config.database, clock)
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
        "password_set": f"{user.password_set_at:%Y-%m-%d %H:%M}",
        "last_login": f"{user.last_login_at:%Y-%m-%d %H:%M}" if user.last_login_at else "-",
    }


async def cmd_users_add(config: GatewayConfig, clock: Clock, args: argparse.Namespace) -> int:
    """Create a user; print the welcome letter (temporary + acquisition password) once."""

    async def run(store: UserStore, auth: Authenticator) -> int:
        ca = ca_client_for(config)
        try:
            user, temporary = await auth.add_user(args.user_id, name=args.name,
                                                  customer=args.customer, role=args.role,
                                                  actor=HELPDESK)
            print(f"user {user.user_id} ({user.name}, {user.customer}, {user.role.value}) created")
            print(f"  temporary login password: {temporary}")
            try:
                acquisition = await ca.issue_acquisition_password(user.user_id, actor=HELPDESK)
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

    async def run(store: UserStore, auth: Authenticator) -> int:
        temporary = await auth.reset_password(args.user_id, actor=HELPDESK)
        print(f"user {args.user_id}: new temporary login password: {temporary}")
        print("It is shown only this once. The user must change it at the next login.")
        return 0

    return await _with_users(config, clock, run)


async def cmd_users_unlock(config: GatewayConfig, clock: Clock, args: argparse.Namespace) -> int:
    """§2.7: unlock a user locked after three wrong passwords."""

    async def run(store: UserStore, auth: Authenticator) -> int:
        await store.unlock(args.user_id, actor=HELPDESK)
        print(f"user {args.user_id} unlocked")
        return 0

    return await _with_users(config, clock, run)


async def cmd_users_disable(config: GatewayConfig, clock: Clock, args: argparse.Namespace) -> int:
    """Disable a user (it then logs in like an unknown user ID)."""

    async def run(store: UserStore, auth: Authenticator) -> int:
        await store.disable(args.user_id, actor=HELPDESK)
        print(f"user {args.user_id} disabled (revoke the certificate with "
              f"`sekisho-ca revoke --user {args.user_id}`)")
        return 0

    return await _with_users(config, clock, run)


async def cmd_users_show(config: GatewayConfig, clock: Clock, args: argparse.Namespace) -> int:
    """Show one user."""

    async def run(store: UserStore, auth: Authenticator) -> int:
        user = await store.get(args.user_id)
        if user is None:
            raise CliError(f"no user {args.user_id}")
        for key, value in _user_row(user).items():
            print(f"{key:13} {value}")
        return 0

    return await _with_users(config, clock, run)


async def cmd_users_list(config: GatewayConfig, clock: Clock, args: argparse.Namespace) -> int:
    """List every user."""

    async def run(store: UserStore, auth: Authenticator) -> int:
        rows = [_user_row(u) for u in await store.list_users()]
        columns = ("user_id", "name", "customer", "role", "state", "failures", "last_login")
        widths = [max([len(c), *(len(str(r[c])) for r in rows)]) for c in columns]
        print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
        for row in rows:
            print("  ".join(str(row[c]).ljust(w) for c, w in zip(columns, widths, strict=True)))
        return 0

    return await _with_users(config, clock, run)


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(prog="sekisho-gateway", description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="configuration file (default: ./config.toml)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the gateway").set_defaults(handler=cmd_serve)
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
    return parser


def main(argv: Sequence[str] | None = None, *, clock: Clock | None = None) -> int:
    """Entry point of `sekisho-gateway`."""
    args = build_parser().parse_args(argv)
    try:
        config = load_gateway_config(args.config)
        configure_logging(config.log_level if args.command == "serve" else "warning",
                          process="gateway")
        with asyncio.Runner(loop_factory=loop_factory(args.command)) as runner:
            return int(runner.run(args.handler(config, clock or SystemClock(), args)))
    except (GatewayError, ConfigError, CliError, ValueError, OSError) as exc:
        print(f"sekisho-gateway: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
