"""The gateway's typed view of config.toml's [gateway] section; every key has a working default.

The gateway refuses to start with a message naming the key to fix (STYLE 12).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from common.config import Address, ConfigError, RawConfig, Section, load_raw, resolve_path
from common.cutovers import load_cutovers
from common.listener import ConnectionLimits
from common.postgres import PostgresConfigError, PostgresSettings
from policy.cutover import Cutover
from policy.password import PasswordPolicy
from policy.session import SessionPolicy


@dataclass(frozen=True)
class RevocationSettings:
    """How long revocation answers are trusted (R-GW-2); see docs/gateway.md."""

    # A "good" answer is re-checked after this long, even when its nextUpdate is later.
    cache_ttl: timedelta
    # While the CA's revocation feed is not followed (connection lost), "good" answers are
    # re-checked this often, so a revocation still takes effect within seconds.
    unfollowed_ttl: timedelta
    # Long-poll wait of one feed request (the CA caps it at 30 s).
    feed_wait: timedelta
    # Timeout of one OCSP or CRL fetch.
    fetch_timeout: timedelta


@dataclass(frozen=True)
class GatewayConfig:
    """Everything the gateway process needs."""

    listen: Address
    public_url: str
    database: Path
    backend_url: str
    # The CA nodes (issue 13): one URL per node, in the order the gateway tries them first
    # (a string in config.toml is a list of one). Public: OCSP, CRL, issuer bundle.
    ca_public_urls: tuple[str, ...]
    # Internal API (bearer token): acquire, renew, acquisition passwords, revocation feed.
    ca_internal_urls: tuple[str, ...]
    # The pinned certificate of each internal URL's listener (https), aligned with
    # ca_internal_urls; None: the system's CAs (or an http:// URL).
    ca_internal_trusts: tuple[Path | None, ...]
    ca_api_token_file: Path
    tls_cert: Path
    tls_key: Path
    trust_bundle_cache: Path
    # The operator's trust anchor for customer certificates (gateway.trust): the CA's root
    # certificate file and/or the SHA-256 of its DER. At least one is required.
    ca_root: Path | None
    ca_root_sha256: str | None
    session: SessionPolicy
    password: PasswordPolicy
    lockout_max_failures: int
    temporary_password_length: int
    renewal_window: timedelta
    admin_path_prefixes: tuple[str, ...]
    # Origins whose pages may open a WebSocket through the gateway (default: public_url's).
    websocket_origins: tuple[str, ...]
    revocation: RevocationSettings
    backend_connect_timeout: timedelta
    backend_read_timeout: timedelta
    max_form_bytes: int
    log_level: str
    # Anonymous acquisition form: POSTs per client address (IPv6: per /64) per window.
    acquire_attempts_per_address: int = 20
    acquire_throttle_window: timedelta = timedelta(minutes=10)
    cutovers: tuple[Cutover, ...] = ()
    connection_limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    # Set when gateway.database is a postgresql:// DSN (issue 12): then `database` is unused.
    postgres: PostgresSettings | None = None
    # Processes (README "Processes"): 1 = one process, as before; N > 1 = a supervising
    # parent and N workers sharing the listen port (gateway/supervisor.py).
    workers: int = 1
    # Private folder of the workers' Prometheus files (multiprocess mode), emptied at start.
    metrics_dir: Path = Path("var/gateway/metrics")
    # Who may read GET /metrics on the TLS listener (the others get 404).
    metrics_allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
        ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    # GET /ready answers 503 once the CA's revocation feed has been unreachable this long.
    ready_revocation_max_age: timedelta = timedelta(seconds=60)

    @property
    def ca_public_url(self) -> str:
        """The first CA node's public URL (messages, the single-node case)."""
        return self.ca_public_urls[0]

    @property
    def ca_internal_url(self) -> str:
        """The first CA node's internal URL."""
        return self.ca_internal_urls[0]

    @property
    def store_name(self) -> str:
        """Where the store is, for messages: the file, or the DSN (it holds no password)."""
        return self.postgres.dsn if self.postgres is not None else str(self.database)


def load_gateway_config(path: Path) -> GatewayConfig:
    """Read and validate the gateway's section of the configuration file."""
    return gateway_config_from(load_raw(path))


def _url(value: str, key: str, schemes: tuple[str, ...] = ("http://", "https://")) -> str:
    if not value.startswith(schemes):
        raise ConfigError(f"gateway.{key} must start with {' or '.join(schemes)}, not {value!r}")
    return value.rstrip("/")


def _urls(gw: Section, key: str, default: str) -> tuple[str, ...]:
    """One URL (a string) or several (a TOML array: one per CA node, issue 13), each
    validated like a single one; an error names the key and the item."""
    value = gw.values.get(key, default)
    if isinstance(value, str):
        return (_url(value, key),)
    if not isinstance(value, list) or not value:
        raise ConfigError(f"gateway.{key} must be a URL or a non-empty list of URLs, "
                          f"not {value!r}")
    urls = []
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise ConfigError(f"gateway.{key}[{index}] must be a URL string, not {item!r}")
        urls.append(_url(item, f"{key}[{index}]"))
    if len(set(urls)) != len(urls):
        raise ConfigError(f"gateway.{key} names the same node twice")
    return tuple(urls)


def _internal_trusts(gw: Section, count: int) -> tuple[Path | None, ...]:
    """`gateway.ca_internal_trust`: one file for every node (it may hold several
    certificates), or a list aligned with `ca_internal_url` (each node its own pin)."""
    value = gw.values.get("ca_internal_trust")
    if value is None:
        return (None,) * count
    if isinstance(value, str):
        return (gw.path("ca_internal_trust"),) * count
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError("gateway.ca_internal_trust must be a file or a list of files")
    if len(value) != count:
        raise ConfigError(f"gateway.ca_internal_trust lists {len(value)} files for "
                          f"{count} gateway.ca_internal_url entries (one per node, same order)")
    return tuple(resolve_path(gw.base_dir, item) for item in value)


def _postgres_settings(gw: Section, dsn: str) -> PostgresSettings:
    """The PostgreSQL store's settings (issue 12): the password from a 0600 file or an
    environment variable, never from config.toml (the DSN is refused if it carries one)."""
    try:
        return PostgresSettings(
            dsn=dsn,
            password_file=(gw.path("database_password_file")
                           if "database_password_file" in gw.values else None),
            password_env=(gw.str("database_password_env")
                          if "database_password_env" in gw.values else None),
            # 0 behind PgBouncer in transaction pooling mode (common.postgres).
            statement_cache_size=gw.int("database_statement_cache_size", 100),
            pool_max_size=gw.int("database_pool_size", 10, minimum=1),
            application_name="sekisho-gateway",
        )
    except PostgresConfigError as exc:
        raise ConfigError(f"gateway.database: {exc}") from None

def parse_workers(value: object, key: str = "gateway.workers") -> int:
    """A worker count: a positive integer, or "auto" for the number of cores we may use."""
    if value == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else os.cpu_count() or 1
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 256:
        raise ConfigError(f"{key} must be a number from 1 to 256 or \"auto\", not {value!r}")
    return value


def _networks(values: tuple[str, ...], key: str
              ) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    try:
        return tuple(ipaddress.ip_network(value) for value in values)
    except ValueError as exc:
        raise ConfigError(f"gateway.{key}: {exc}") from None


def gateway_config_from(raw: RawConfig) -> GatewayConfig:
    """Build the gateway configuration from parsed TOML."""
    gw = raw.section("gateway")
    logging = raw.section("logging")
    max_age = gw.duration("password_max_age", "90d")
    try:
        password = PasswordPolicy(
            min_length=gw.int("password_min_length", 8, minimum=1),
            require_letters_and_digits=gw.bool("password_require_letters_and_digits", True),
            history=gw.int("password_history", 2),
            # "0d" turns expiry off (NIST SP 800-63B discourages periodic expiry).
            max_age=max_age if max_age > timedelta(0) else None,
            min_zxcvbn_score=gw.int("password_min_score", 2),
        )
        session = SessionPolicy(
            idle_timeout=gw.duration("session_idle_timeout", "30m"),
            absolute_timeout=gw.duration("session_absolute_timeout", "12h"),
        )
    except ValueError as exc:
        raise ConfigError(f"[gateway] {exc}") from None
    prefixes = gw.list_of_str("admin_path_prefixes", ["/admin/"])
    if any(not p.startswith("/") for p in prefixes):
        raise ConfigError("gateway.admin_path_prefixes must be paths starting with '/'")
    revocation = RevocationSettings(
        cache_ttl=gw.duration("revocation_cache_ttl", "5m"),
        unfollowed_ttl=gw.duration("revocation_unfollowed_ttl", "2s"),
        feed_wait=gw.duration("revocation_feed_wait", "25s"),
        fetch_timeout=gw.duration("revocation_fetch_timeout", "3s"),
    )
    if revocation.feed_wait > timedelta(seconds=30):
        raise ConfigError("gateway.revocation_feed_wait must be at most 30s (the CA's cap)")
    public_url = _url(gw.str("public_url", "https://127.0.0.1:8443"), "public_url", ("https://",))
    origins = gw.list_of_str("websocket_allowed_origins", [public_url])
    if any(not o.startswith("https://") or o.count("/") != 2 for o in origins):
        raise ConfigError("gateway.websocket_allowed_origins must be origins like "
                          "https://host[:port] (no path)")
    lockout = gw.int("lockout_max_failures", 3, minimum=1)
    database = gw.str("database", "var/gateway/gateway.sqlite3")
    postgres = (_postgres_settings(gw, database)
                if database.startswith(("postgresql:", "postgres:")) else None)
    if postgres is None and any(key in gw.values for key in (
            "database_password_file", "database_password_env")):
        raise ConfigError("gateway.database_password_file / _env need gateway.database to be a "
                          "postgresql:// DSN")
    temporary_length = gw.int("temporary_password_length", 12, minimum=password.min_length)
    internal_urls = _urls(gw, "ca_internal_url", "http://127.0.0.1:8081")
    return GatewayConfig(
        listen=gw.address("listen", "127.0.0.1:8443"),
        public_url=public_url,
        database=(gw.path("database", "var/gateway/gateway.sqlite3") if postgres is None
                  else raw.base_dir / "var/gateway/gateway.sqlite3"),
        postgres=postgres,
        backend_url=_url(gw.str("backend_url", "http://127.0.0.1:8090"), "backend_url"),
        ca_public_urls=_urls(gw, "ca_public_url", "http://127.0.0.1:8080"),
        ca_internal_urls=internal_urls,
        ca_internal_trusts=_internal_trusts(gw, len(internal_urls)),
        ca_api_token_file=gw.path("ca_api_token_file", "var/secrets/ca-api-token"),
        tls_cert=gw.path("tls_cert", "var/gateway/tls/server.crt.pem"),
        tls_key=gw.path("tls_key", "var/gateway/tls/server.key.pem"),
        trust_bundle_cache=gw.path("trust_bundle_cache", "var/gateway/trust-bundle.pem"),
        ca_root=gw.path("ca_root") if "ca_root" in gw.values else None,
        ca_root_sha256=gw.str("ca_root_sha256", "") or None,
        session=session,
        password=password,
        lockout_max_failures=lockout,
        temporary_password_length=temporary_length,
        renewal_window=gw.duration("renewal_window", "30d"),
        admin_path_prefixes=prefixes,
        websocket_origins=origins,
        revocation=revocation,
        backend_connect_timeout=gw.duration("backend_connect_timeout", "5s"),
        backend_read_timeout=gw.duration("backend_read_timeout", "60s"),
        max_form_bytes=gw.int("max_form_bytes", 16384, minimum=1024),
        acquire_attempts_per_address=gw.int("acquire_attempts_per_address", 20, minimum=1),
        acquire_throttle_window=gw.duration("acquire_throttle_window", "10m"),
        log_level=logging.str("level", "info"),
        cutovers=tuple(load_cutovers(raw)),
        connection_limits=ConnectionLimits.from_section(gw),
        workers=parse_workers(gw.values.get("workers", 1)),
        metrics_dir=gw.path("metrics_dir", "var/gateway/metrics"),
        metrics_allow=_networks(gw.list_of_str("metrics_allow", ["127.0.0.0/8", "::1/128"]),
                                "metrics_allow"),
        ready_revocation_max_age=gw.duration("ready_revocation_max_age", "60s"),
    )
