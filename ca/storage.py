"""The CA's storage seam (issue 13): one SQLite file (the embedded default, `ca.store`) or a
PostgreSQL database shared by several CA nodes (`ca.store_pg`), chosen by `ca.database`.
Both offer the same methods with the same rules; the rest of the CA only sees `CaStore`."""

from __future__ import annotations

from ca.config import CaConfig
from ca.store import Store
from ca.store_pg import PgStore
from common.postgres import PostgresSettings

CaStore = Store | PgStore


def postgres_settings(config: CaConfig, *, daemon: bool = False) -> PostgresSettings | None:
    """The PostgreSQL settings when `ca.database` is a DSN, else None. A daemon's sessions
    are named `sekisho-ca:<node>` (what `cluster status` lists), an officer command's
    `sekisho-ca-cli:<node>`."""
    if config.database_dsn is None:
        return None
    role = "sekisho-ca" if daemon else "sekisho-ca-cli"
    return PostgresSettings(dsn=config.database_dsn,
                            password_file=config.database_password_file,
                            password_env=config.database_password_env,
                            application_name=f"{role}:{config.node_name}")


async def open_store(config: CaConfig, *, daemon: bool = False) -> CaStore:
    """Open (creating and migrating if needed) the CA's store as the config says."""
    settings = postgres_settings(config, daemon=daemon)
    if settings is None:
        return await Store.open(config.database)
    return await PgStore.open(settings)


def daemon_instance(config: CaConfig, publishing: bool) -> str:
    """Whose reservations a process holds (common.sqlite.Owner.instance): on SQLite one
    daemon per store ("ca-daemon"); on PostgreSQL one per node ("ca-daemon@<node>"), so a
    node that restarts settles only its own dead run's intents (R-FAULT-2/3)."""
    role = "ca-daemon" if publishing else "ca-cli"
    return role if config.database_dsn is None else f"{role}@{config.node_name}"
