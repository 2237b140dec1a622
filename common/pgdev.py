"""A local PostgreSQL cluster made with Debian's `initdb` + `pg_ctl`: the tests' throwaway server
and the developer's `var/pg` (issue 12: "a real server ... made by the fixtures", `make
run-cluster`). One implementation for both, so what the tests run is what a developer runs.

The server listens on a Unix socket in its own folder only (`listen_addresses = ''`: no TCP
port to collide with or to expose), the folder is 0700 and owned by the server's user.
PostgreSQL refuses to run as root, so when root starts it the server runs as the system user
`sekisho-pg` (created with `useradd` on first use); anyone else runs it as themselves.

    python -m common.pgdev start   # initdb on first use, then start; prints the DSN
    python -m common.pgdev dsn     # the DSN of the running dev cluster
    python -m common.pgdev stop    # a clean (fast) shutdown; the data stays in var/pg
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import grp
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

SERVER_USER = "sekisho-pg"
SUPERUSER = "postgres"
PORT = 5432  # with no TCP listener the port only names the socket file (.s.PGSQL.5432)
# The kernel's limit on a Unix socket path (sun_path, 108 bytes with its NUL).
_SOCKET_PATH_MAX = 107
_DEFAULT_DEV_FOLDER = Path("var/pg")


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries are not installed (Debian: apt-get install postgresql)."""


class ClusterError(RuntimeError):
    """The local cluster could not be created, started or stopped; the message says why."""


def find_bindir(search: str = "/usr/lib/postgresql/*/bin") -> Path:
    """The newest Debian PostgreSQL server's bin folder (SEKISHO_PG_BINDIR overrides it).

    Debian installs each major version side by side under /usr/lib/postgresql/<major>/bin and
    puts only client wrappers on PATH, so `initdb` is looked up there, not on PATH.
    """
    override = os.environ.get("SEKISHO_PG_BINDIR")
    candidates = [Path(override)] if override else [
        Path(path) for path in sorted(glob.glob(search), key=_major_version, reverse=True)]
    for bindir in candidates:
        if all((bindir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres", "psql")):
            return bindir
    where = override or search
    raise PostgresUnavailable(
        f"no PostgreSQL server binaries (initdb, pg_ctl, postgres, psql) in {where}; "
        "install them with: apt-get install postgresql")


def _major_version(bindir: str) -> tuple[int, ...]:
    match = re.search(r"/postgresql/([0-9.]+)/bin", bindir)
    return tuple(int(part) for part in match.group(1).split(".")) if match else (0,)


def server_account() -> tuple[int, int] | None:
    """(uid, gid) the server must run as: `sekisho-pg` when we are root (created if missing),
    None when we are not root (the server runs as the current user)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        result = subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home",
             "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", SERVER_USER],
            capture_output=True, text=True, timeout=30, check=False)
        # Exit 9: another process created it between our lookup and useradd; fine.
        if result.returncode not in (0, 9):
            raise ClusterError(f"useradd {SERVER_USER} failed: {result.stderr.strip()}") from None
        entry = pwd.getpwnam(SERVER_USER)
    return entry.pw_uid, entry.pw_gid


@dataclass
class LocalCluster:
    """A PostgreSQL cluster in `folder`: data in `folder/data`, the socket and the log in
    `folder`. `durable=False` turns fsync off (tests: a crash loses a throwaway database)."""

    folder: Path
    bindir: Path
    account: tuple[int, int] | None
    durable: bool = True

    @classmethod
    def in_folder(cls, folder: Path, *, durable: bool = True) -> LocalCluster:
        """A cluster (not yet created) in `folder`, with the binaries and account to use."""
        return cls(folder=folder.resolve(), bindir=find_bindir(), account=server_account(),
                   durable=durable)

    @classmethod
    def throwaway(cls) -> LocalCluster:
        """A cluster in a new folder under the system temp dir, fsync off: for tests.

        Not under pytest's tmp_path: that tree is 0700 and owned by root, and the server's
        user must be able to reach its folder.
        """
        bindir, account = find_bindir(), server_account()
        folder = Path(tempfile.mkdtemp(prefix="sekisho-pg-"))
        return cls(folder=folder, bindir=bindir, account=account, durable=False)

    # -- paths and connection strings ----------------------------------------------------

    @property
    def data(self) -> Path:
        """The data directory (PGDATA)."""
        return self.folder / "data"

    @property
    def log(self) -> Path:
        """The server's log file (read it when the start fails)."""
        return self.folder / "postgres.log"

    @property
    def socket(self) -> Path:
        """The Unix socket the server listens on."""
        return self.folder / f".s.PGSQL.{PORT}"

    def dsn(self, database: str = SUPERUSER, user: str = SUPERUSER) -> str:
        """A password-less `postgresql://` DSN for the Unix socket (asyncpg's `host=` form)."""
        return (f"postgresql://{quote(user, safe='')}@/{quote(database, safe='')}"
                f"?host={quote(str(self.folder), safe='/')}&port={PORT}")

    # -- life cycle ----------------------------------------------------------------------

    def is_initialised(self) -> bool:
        """True once `initdb` has made the data directory."""
        return (self.data / "PG_VERSION").is_file()

    def is_running(self) -> bool:
        """True when a server answers on this cluster's data directory (`pg_ctl status`)."""
        if not self.is_initialised():
            return False
        return self._run("pg_ctl", "status", "-D", str(self.data), check=False).returncode == 0

    def init(self) -> None:
        """`initdb` into `folder/data` (0700, owned by the server's user), with the config the
        socket-only server needs; local connections as `postgres` are trusted (the socket's
        folder is 0700), every other role needs its SCRAM password."""
        if len(str(self.socket)) > _SOCKET_PATH_MAX:
            raise ClusterError(f"{self.socket} is longer than the {_SOCKET_PATH_MAX} bytes a "
                               "Unix socket path may have; use a shorter folder")
        self._prepare_folder()
        self._run("initdb", "--pgdata", str(self.data), "--username", SUPERUSER,
                  "--auth-local", "trust", "--auth-host", "reject", "--encoding", "UTF8",
                  "--locale", "C", *([] if self.durable else ["--no-sync"]), timeout=120)
        settings = {
            "listen_addresses": "''",
            "unix_socket_directories": f"'{self.folder}'",
            "unix_socket_permissions": "0700",
            "port": str(PORT),
            "password_encryption": "'scram-sha-256'",
            "max_connections": "200",
            "shared_buffers": "'32MB'",
            # A deadlock between two test transactions is found in 0.1 s, not 1 s.
            "deadlock_timeout": "'100ms'",
            "logging_collector": "off",
        }
        if not self.durable:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# sekisho (common/pgdev.py)\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        (self.data / "pg_hba.conf").write_text(
            "# sekisho (common/pgdev.py): the superuser without a password over the 0700\n"
            "# socket folder; every other role with its SCRAM password.\n"
            f"local all {SUPERUSER} trust\n"
            "local all all scram-sha-256\n")

    def start(self, *, timeout: float = 30.0) -> None:
        """Start the server and wait until it accepts connections, at most `timeout` seconds;
        a server that is not up by then is stopped and the log's tail is in the error."""
        if not self.is_initialised():
            self.init()
        result = self._run("pg_ctl", "start", "--wait", f"--timeout={int(timeout)}",
                           "-D", str(self.data), "-l", str(self.log),
                           check=False, timeout=timeout + 15)
        if result.returncode != 0:
            with contextlib.suppress(ClusterError, subprocess.TimeoutExpired):
                self.stop()
            raise ClusterError(f"PostgreSQL did not start within {timeout:.0f} s in "
                               f"{self.folder}: {result.stderr.strip()}\n{self.log_tail()}")

    def stop(self, *, immediate: bool = False) -> None:
        """`pg_ctl stop`: `immediate` for a throwaway cluster (no checkpoint: it is deleted
        next), else `fast` (clean shutdown, the dev data is kept)."""
        if not self.is_initialised():
            return
        mode = "immediate" if immediate else "fast"
        result = self._run("pg_ctl", "stop", "--wait", "--timeout=30", "-m", mode,
                           "-D", str(self.data), check=False, timeout=45)
        if result.returncode != 0 and self.is_running():
            raise ClusterError(f"pg_ctl stop failed: {result.stderr.strip()}")

    def destroy(self) -> None:
        """Stop immediately (if running) and delete the folder."""
        try:
            self.stop(immediate=True)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server log, for error messages."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    # -- SQL as the superuser ------------------------------------------------------------

    def psql(self, sql: str, *, database: str = SUPERUSER) -> str:
        """Run `sql` with psql as the superuser over the socket; returns the unaligned output.

        psql rather than a driver: fixtures call it from synchronous code while a test's event
        loop may be running in the same thread.
        """
        result = subprocess.run(
            [str(self.bindir / "psql"), "--no-psqlrc", "--quiet", "--tuples-only",
             "--no-align", "-v", "ON_ERROR_STOP=1", "-h", str(self.folder), "-p", str(PORT),
             "-U", SUPERUSER, "-d", database, "-c", sql],
            capture_output=True, text=True, timeout=60, check=False,
            env=os.environ | {"PGCONNECT_TIMEOUT": "10"})
        if result.returncode != 0:
            raise ClusterError(f"psql failed: {result.stderr.strip()}")
        return result.stdout.strip()

    # -- internals -----------------------------------------------------------------------

    def _prepare_folder(self) -> None:
        """Make `folder` 0700 for the server's user and check that user can reach it."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.folder.chmod(0o700)
        if self.account is None:
            return
        uid, gid = self.account
        os.chown(self.folder, uid, gid)
        blocked = [parent for parent in self.folder.parents if not _can_traverse(parent, uid, gid)]
        if blocked:
            raise ClusterError(
                f"the server's user {SERVER_USER} cannot reach {self.folder}: "
                f"{blocked[0]} has no search (x) permission for it; grant it, e.g. "
                f"chgrp {SERVER_USER} {blocked[0]} && chmod g+x {blocked[0]}")

    def _run(self, tool: str, *args: str, check: bool = True, timeout: float = 60,
             ) -> subprocess.CompletedProcess[str]:
        uid, gid = self.account or (None, None)
        # cwd: the server's user may not be allowed into ours (e.g. root's home).
        result = subprocess.run([str(self.bindir / tool), *args], capture_output=True,
                                text=True, timeout=timeout, check=False, cwd=self.folder,
                                env=_server_env(), user=uid, group=gid,
                                extra_groups=None if uid is None else [])
        if check and result.returncode != 0:
            raise ClusterError(f"{tool} {' '.join(args)} failed: {result.stderr.strip()}")
        return result


def _can_traverse(folder: Path, uid: int, gid: int) -> bool:
    """Whether user uid (primary group gid) may search `folder` (the x bit that applies)."""
    info = folder.stat()
    if info.st_uid == uid:
        return bool(info.st_mode & 0o100)
    groups = {gid, *(group.gr_gid for group in grp.getgrall()
                     if SERVER_USER in group.gr_mem)}
    if info.st_gid in groups:
        return bool(info.st_mode & 0o010)
    return bool(info.st_mode & 0o001)


def _server_env() -> dict[str, str]:
    """The environment for initdb/pg_ctl: ours minus PG* variables (a PGDATA or PGPORT set for
    another server must not redirect this one) and with the C locale."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    return env | {"LC_ALL": "C", "LANG": "C"}


# -- the developer's cluster under var/ ----------------------------------------------------


def dev_cluster(folder: Path = _DEFAULT_DEV_FOLDER) -> LocalCluster:
    """The developer's cluster in `var/pg` (durable: fsync on)."""
    return LocalCluster.in_folder(folder, durable=True)


def _open_var_for_server(cluster: LocalCluster) -> None:
    """var/ is 0700 like every runtime folder; when the server runs as `sekisho-pg`, give that
    user's group search permission on var/ only (0710), so it can reach var/pg and nothing
    else (var/pg is its own 0700 folder; the others stay unreadable to it)."""
    if cluster.account is None:
        return
    var = cluster.folder.parent
    var.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not _can_traverse(var, *cluster.account):
        os.chown(var, -1, cluster.account[1])
        var.chmod(0o710)


def main(argv: list[str] | None = None) -> int:
    """`python -m common.pgdev start|stop|dsn|status [--folder var/pg]`."""
    parser = argparse.ArgumentParser(prog="python -m common.pgdev",
                                     description="A local PostgreSQL under var/ for development.")
    parser.add_argument("command", choices=["start", "stop", "dsn", "status"])
    parser.add_argument("--folder", type=Path, default=_DEFAULT_DEV_FOLDER,
                        help="the cluster's folder (default: var/pg)")
    args = parser.parse_args(argv)
    try:
        cluster = dev_cluster(args.folder)
        if args.command == "start":
            _open_var_for_server(cluster)
            if not cluster.is_running():
                cluster.start()
            print(cluster.dsn())
        elif args.command == "stop":
            cluster.stop()
        elif args.command == "dsn":
            print(cluster.dsn())
        else:
            running = cluster.is_running()
            print(f"{'running' if running else 'stopped'}: {cluster.folder}")
            return 0 if running else 3
    except (PostgresUnavailable, ClusterError, subprocess.TimeoutExpired) as exc:
        print(f"pgdev: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
