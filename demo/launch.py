"""`make run`: start the CA, the demo trading backend and the gateway, with a demo user.

On first run it initialises the CA (random key passphrase in var/secrets, mode 0600) and
creates a demo administrator through the helpdesk CLI, whose welcome letter (temporary
password and acquisition password) is kept in var/demo/welcome.txt (0600). Later starts show
the letter only while it is still true (the demo user has never logged in and the helpdesk has
not reset the password since); otherwise they say how to get new passwords (issue 15 item 17).
Ctrl-C stops everything.

`--cluster` (`make run-cluster`) also starts a local PostgreSQL under var/pg
(`python -m common.pgdev`) and runs the gateway as a supervisor with 2 workers on the one
port, its store in a database of that PostgreSQL (the gateway reads a copy of the config,
`config.cluster.toml`, naming it); the CA stays on its SQLite file. Ctrl-C stops PostgreSQL
too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import asyncpg

from ca.config import load_ca_config
from common.config import Address, load_raw
from common.files import private_directory, restrict_new_files
from gateway.config import GatewayConfig, load_gateway_config
from gateway.store import open_user_store
from gateway.users import User
from policy.clock import SystemClock

DEMO_USER = ("100001", "山田 太郎", "関所商事株式会社", "admin")


def letter_still_true(config: GatewayConfig, user_id: str, letter: Path) -> bool:
    """Whether the welcome letter's temporary password still logs the demo user in: never
    logged in, still on a temporary password, and not reset after the letter was written.
    Read through the gateway's own store (SQLite or PostgreSQL)."""

    async def read() -> User | None:
        store = await open_user_store(config, SystemClock())
        try:
            return await store.get(user_id)
        finally:
            await store.close()

    try:
        user = asyncio.run(read())
    except Exception:  # no store yet, or unreachable: the letter is not vouched for
        return False
    if user is None:
        return False
    # password_set_at has whole seconds; the letter is written just after the user is added.
    return (user.must_change and user.last_login_at is None and not user.disabled
            and user.password_set_at.timestamp() <= letter.stat().st_mtime + 1)


def welcome_text(config: GatewayConfig, user_id: str, letter: Path) -> str:
    """What `make run` prints about the demo user: the letter, or how to get new passwords."""
    if letter_still_true(config, user_id, letter):
        return (f"Demo user (the welcome letter, kept in {letter}):\n"
                f"{letter.read_text().rstrip()}\n"
                "Acquire the certificate on the login page (電子証明書取得), import the .p12 "
                "with\nthe acquisition password, then log in (電子証明書ログイン) with the "
                "temporary\npassword.")
    return (f"Demo user {user_id}: the first welcome letter ({letter}) no longer holds (the\n"
            "user has logged in, or the password was reset). Log in with the password you\n"
            "chose. Forgotten? A new temporary login password:\n"
            f"  .venv/bin/sekisho-gateway users reset-password {user_id}\n"
            "and, to acquire a certificate again (new PC, expiry), a new acquisition password:\n"
            f"  .venv/bin/sekisho-ca acquisition-password {user_id}")


def cluster_config(config: Path, dsn: str) -> Path:
    """`make run-cluster`'s copy of the configuration: the same file with the gateway's store
    set to the local PostgreSQL database (written beside it, so relative paths resolve the
    same; git-ignored)."""
    text = config.read_text()
    line = f'database = "{dsn}"   # make run-cluster: the local PostgreSQL under var/pg'
    section = re.search(r"^\[gateway\][^\n]*\n(?:(?!^\[).*\n?)*", text, flags=re.M)
    if section is None:
        text += f"\n[gateway]\n{line}\n"
    else:
        body, count = re.subn(r"^database\s*=.*$", lambda _: line, section.group(0), count=1,
                              flags=re.M)
        if not count:
            body = section.group(0).replace("\n", f"\n{line}\n", 1)
        text = text[:section.start()] + body + text[section.end():]
    derived = config.with_name(f"{config.stem}.cluster.toml")
    fd = os.open(derived, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    return derived


async def _create_database(dsn: str, name: str) -> str:
    """The DSN of database `name` on the server of `dsn`, created when missing."""
    conn = await asyncpg.connect(dsn)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base, _, query = dsn.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}?{query}"


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True,
                          check=False)


def _wait(probe: Callable[[], AbstractContextManager[object]], what: str,
          seconds: float = 30) -> None:
    """Retry `probe` (a connection it opens and closes) until it succeeds or time is up."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with probe():
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"make run: {what} within {seconds:.0f} s")


def _wait_http(url: str) -> None:
    _wait(lambda: urllib.request.urlopen(url, timeout=1),  # noqa: S310 (our loopback URL)
          f"nothing answered at {url}")


def _wait_tcp(address: Address) -> None:
    _wait(lambda: socket.create_connection((address.host, address.port), timeout=1),
          f"nothing listens on {address.host}:{address.port}")


def main() -> int:
    """Start everything and wait for Ctrl-C."""
    restrict_new_files()  # inherited by every process it starts
    # Ctrl-C stops everything even when we were started with SIGINT ignored (a shell's
    # background job inherits that, and the daemons handle SIGINT themselves, so they would
    # stop and leave us reporting a failure).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, default=Path("config.toml"))
    parser.add_argument("--cluster", action="store_true",
                        help="also a local PostgreSQL under var/pg, and 2 gateway workers")
    args = parser.parse_args()
    config_arg = ["--config", str(args.config)]
    ca_config = load_ca_config(args.config)
    gateway = load_gateway_config(args.config)
    demo = load_raw(args.config).section("demo")
    private_directory(ca_config.data_dir)

    children: list[subprocess.Popen[bytes]] = []
    postgres = ["common.pgdev", "--folder", str(ca_config.data_dir / "pg")]
    postgres_started = False
    gateway_config_arg = config_arg  # make run-cluster: a copy naming the PostgreSQL store

    def start(*command: str) -> None:
        children.append(subprocess.Popen([sys.executable, "-m", *command]))

    try:
        if not (ca_config.keys.directory / "root.crt.pem").exists():
            result = _run("ca", *config_arg, "init", "--generate-passphrase")
            if result.returncode != 0:
                raise SystemExit(result.stderr.strip())
            print(result.stdout.strip())
        start("ca", *config_arg, "serve")
        _wait_http(f"http://{ca_config.public_listen.host}:{ca_config.public_listen.port}/health")
        if args.cluster:
            # After the CA: its start tightens var/ to 0700, which would lock PostgreSQL's
            # own user (when we run as root) out of var/pg; pgdev opens var/ to it (0710).
            result = _run(*postgres, "start")
            if result.returncode != 0:
                raise SystemExit(f"make run-cluster: PostgreSQL did not start: {result.stderr}")
            postgres_started = True
            dsn = asyncio.run(_create_database(result.stdout.strip(), "sekisho_gateway"))
            gateway_config_arg = ["--config", str(cluster_config(args.config, dsn))]
            gateway = load_gateway_config(Path(gateway_config_arg[1]))
            print(f"PostgreSQL (var/pg) holds the gateway's store: {dsn}")
        demo_listen = demo.str("listen", "127.0.0.1:8090")
        start("demo", "--listen", demo_listen)
        start("gateway", *gateway_config_arg, "serve",
              *(["--workers", "2"] if args.cluster else []))
        _wait_tcp(gateway.listen)

        # The cluster's gateway store is another database: its demo user has its own letter.
        welcome = ca_config.data_dir / "demo" / (
            "welcome-cluster.txt" if args.cluster else "welcome.txt")
        if not welcome.exists():
            user_id, name, customer, role = DEMO_USER
            result = _run("gateway", *gateway_config_arg, "users", "add", user_id, "--name", name,
                          "--customer", customer, "--role", role)
            if result.returncode != 0:
                raise SystemExit(f"make run: could not create the demo user: {result.stderr}")
            welcome.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(welcome, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(result.stdout)
        url = gateway.public_url
        print("\n" + "=" * 72)
        print(f"Sekisho is running. Open {url}/ in a browser.")
        print("The gateway's demo TLS certificate is self-signed: accept the warning once.")
        print(welcome_text(gateway, DEMO_USER[0], welcome))
        if args.cluster:
            print("The gateway runs as a supervisor and 2 worker processes on the one port;")
            print(f"watch them: curl -sk {url}/metrics | grep worker   (and {url}/ready).")
            print("Both workers share the PostgreSQL store (sessions, lockout, downloads);")
            print("helpdesk commands: .venv/bin/sekisho-gateway "
                  f"{' '.join(gateway_config_arg)} ...")
        print("Ctrl-C stops everything.")
        print("=" * 72 + "\n")
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        failed = [child.args for child in children if child.poll() is not None]
        print(f"make run: a process stopped: {failed}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        # A second Ctrl-C while the children stop must not abort the clean-up with a
        # traceback (and `make` with "Error"): they already have their signal.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
        if postgres_started:
            result = _run(*postgres, "stop")
            print("PostgreSQL stopped" if result.returncode == 0
                  else f"make run-cluster: pg_ctl stop: {result.stderr.strip()}")


if __name__ == "__main__":
    raise SystemExit(main())
