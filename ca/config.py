"""The CA's typed view of config.toml; refuses to start with a message naming the key to fix."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from common.config import Address, ConfigError, RawConfig, Section, load_raw
from common.cutovers import GenerationDates, generation_dates, load_cutovers
from common.listener import ConnectionLimits
from common.postgres import PostgresConfigError, check_dsn
from policy.cutover import Cutover
from policy.lockout import LockoutPolicy
from policy.profile import CertificateProfile

PKCS12_MIN_KDF_ROUNDS = 2048


@dataclass(frozen=True)
class KeysConfig:
    """Where the CA's keys live and how their passphrase is found."""

    directory: Path
    passphrase_file: Path
    passphrase_env: str
    root_algorithm: str
    generation_algorithm: str
    # R-KEY-1: "file" (encrypted PEM files) or "pkcs11" (keys generated in a token); see
    # keys/custody.py. The PIN comes from pin_file (0600) or pin_env, never from this file.
    backend: str = "file"
    pkcs11_module: str = ""
    token_label: str = ""
    pin_file: Path = Path("var/secrets/token-pin")
    pin_env: str = "SEKISHO_TOKEN_PIN"
    pkcs11_sessions: int = 1
    key_label_prefix: str = "sekisho-"
    ocsp_keys: str = "token"


@dataclass(frozen=True)
class CaConfig:
    """Everything the CA process needs."""

    organization: str
    public_url: str
    public_listen: Address
    internal_listen: Address
    internal_tls: bool
    internal_tls_cert: Path
    internal_tls_key: Path
    database: Path
    api_token_file: Path
    max_body_bytes: int
    keys: KeysConfig
    profile: CertificateProfile
    pkcs12_kdf_rounds: int
    acquisition_lockout: LockoutPolicy
    acquisition_password_length: int
    crl_validity: timedelta
    crl_resign_interval: timedelta
    crl_drop_expired: bool
    ocsp_response_validity: timedelta
    ocsp_responder_validity: timedelta
    ocsp_responder_renew_before: timedelta
    log_level: str
    data_dir: Path
    generations: dict[str, GenerationDates]
    cutovers: tuple[Cutover, ...]
    connection_limits: ConnectionLimits
    # R-FAULT-2/3: how long an intent or a counted password try may stay unfinished while
    # its process lives (a dead process's are settled at its restart). Above the longest
    # queue a burst builds: 2,000 acquisitions at 600,000 PBKDF2 rounds take ~7 min on 2 cores.
    request_deadline: timedelta = timedelta(minutes=10)
    # Issue 13: `ca.database` may be a postgresql:// DSN instead of the SQLite path; its
    # password comes from a 0600 file or an environment variable, never from config.toml.
    database_dsn: str | None = None
    database_password_file: Path | None = None
    database_password_env: str | None = None
    # This node's name in a cluster: its reservations belong to "ca-daemon@<node_name>", so a
    # restarted node settles its own dead run's intents at once, never another node's.
    node_name: str = "local"
    # On PostgreSQL, LISTEN for other nodes' revocations (off only behind a PgBouncer in
    # transaction mode, which cannot LISTEN: the 0.25 s poll of the feed then remains).
    revocation_listen: bool = True


def load_ca_config(path: Path) -> CaConfig:
    """Read and validate the CA's sections of the configuration file."""
    return ca_config_from(load_raw(path))


def ca_config_from(raw: RawConfig) -> CaConfig:
    """Build the CA configuration from parsed TOML."""
    ca = raw.section("ca")
    keys = raw.section("keys")
    cert = raw.section("certificate")
    acquisition = raw.section("acquisition")
    crl = raw.section("crl")
    ocsp = raw.section("ocsp")
    public_url = ca.str("public_url", "http://127.0.0.1:8080").rstrip("/")
    if not public_url.startswith(("http://", "https://")):
        raise ConfigError("ca.public_url must start with http:// (CRL and OCSP are plain HTTP)")
    try:
        profile = CertificateProfile(
            validity=timedelta(days=cert.int("validity_days", 365, minimum=1)),
            server_key_algorithm=cert.str("key_algorithm", "p256"),
            crl_url_template=public_url + "/crl/{generation}.crl",
            ocsp_url=public_url + "/ocsp",
            renewal_window=timedelta(days=cert.int("renewal_window_days", 30, minimum=1)),
        )
        lockout = LockoutPolicy(acquisition.int("max_failures", 3, minimum=1))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    crl_validity = crl.duration("validity", "24h")
    crl_resign = crl.duration("resign_interval", "1h")
    if crl_resign >= crl_validity:
        raise ConfigError("crl.resign_interval must be shorter than crl.validity")
    responder_validity = timedelta(days=ocsp.int("responder_validity_days", 90, minimum=2))
    renew_before = timedelta(days=ocsp.int("responder_renew_before_days", 30, minimum=1))
    if renew_before >= responder_validity:
        raise ConfigError("ocsp.responder_renew_before_days must be below responder_validity_days")
    for key in ("root_algorithm", "generation_algorithm"):
        if keys.str(key, "p256") not in ("p256", "p384"):
            raise ConfigError(f"keys.{key} must be p256 or p384")
    backend = keys.str("backend", "file")
    if backend not in ("file", "pkcs11"):
        raise ConfigError('keys.backend must be "file" or "pkcs11"')
    if "pin" in keys.values or "user_pin" in keys.values:
        raise ConfigError("the token PIN never goes in the config file; use keys.pin_file "
                          "(mode 0600) or the variable named by keys.pin_env")
    if backend == "pkcs11" and not (keys.str("pkcs11_module", "") and
                                    keys.str("token_label", "")):
        raise ConfigError('keys.backend = "pkcs11" needs keys.pkcs11_module and keys.token_label')
    if keys.str("ocsp_keys", "token") not in ("token", "file"):
        raise ConfigError('keys.ocsp_keys must be "token" or "file"')
    database_dsn, password_file, password_env = _database_settings(ca)
    return CaConfig(
        organization=ca.str("organization", "Sekisho"),
        public_url=public_url,
        public_listen=ca.address("public_listen", "127.0.0.1:8080"),
        internal_listen=ca.address("internal_listen", "127.0.0.1:8081"),
        internal_tls=ca.bool("internal_tls", False),
        internal_tls_cert=ca.path("internal_tls_cert", "var/ca/internal-tls.crt.pem"),
        internal_tls_key=ca.path("internal_tls_key", "var/secrets/ca-internal-tls.key.pem"),
        database=(ca.path("database", "var/ca/ca.sqlite3")
                  if not str(ca.values.get("database", "")).startswith("postgres")
                  else Path("var/ca/ca.sqlite3")),
        api_token_file=ca.path("api_token_file", "var/secrets/ca-api-token"),
        max_body_bytes=ca.int("max_body_bytes", 65536, minimum=4096),
        keys=KeysConfig(
            directory=keys.path("directory", "var/keys"),
            passphrase_file=keys.path("passphrase_file", "var/secrets/ca-passphrase"),
            passphrase_env=keys.str("passphrase_env", "SEKISHO_CA_PASSPHRASE"),
            root_algorithm=keys.str("root_algorithm", "p384"),
            generation_algorithm=keys.str("generation_algorithm", "p256"),
            backend=backend,
            pkcs11_module=keys.str("pkcs11_module", ""),
            token_label=keys.str("token_label", ""),
            pin_file=keys.path("pin_file", "var/secrets/token-pin"),
            pin_env=keys.str("pin_env", "SEKISHO_TOKEN_PIN"),
            pkcs11_sessions=keys.int("pkcs11_sessions", 1, minimum=1),
            key_label_prefix=keys.str("key_label_prefix", "sekisho-"),
            ocsp_keys=keys.str("ocsp_keys", "token"),
        ),
        profile=profile,
        pkcs12_kdf_rounds=cert.int("pkcs12_kdf_rounds", 600_000, minimum=PKCS12_MIN_KDF_ROUNDS),
        acquisition_lockout=lockout,
        acquisition_password_length=acquisition.int("password_length", 16, minimum=12),
        crl_validity=crl_validity,
        crl_resign_interval=crl_resign,
        crl_drop_expired=crl.bool("drop_expired", True),
        ocsp_response_validity=ocsp.duration("response_validity", "1h"),
        ocsp_responder_validity=responder_validity,
        ocsp_responder_renew_before=renew_before,
        log_level=raw.section("logging").str("level", "info"),
        data_dir=raw.section("paths").path("data_dir", "var"),
        generations=generation_dates(raw),
        cutovers=tuple(load_cutovers(raw)),
        request_deadline=ca.duration("request_deadline", "10m"),
        connection_limits=ConnectionLimits.from_section(ca),
        database_dsn=database_dsn,
        database_password_file=password_file,
        database_password_env=password_env,
        node_name=_node_name(ca.str("node_name", socket.gethostname())),
        revocation_listen=ca.bool("revocation_listen", True),
    )


def _database_settings(ca: Section) -> tuple[str | None, Path | None, str | None]:
    """(DSN, password file, password variable) when `ca.database` is a PostgreSQL DSN
    (issue 13), else Nones: the SQLite path stays the default."""
    if "database_password" in ca.values:
        raise ConfigError("the database password never goes in the config file; use "
                          "ca.database_password_file (mode 0600) or ca.database_password_env")
    raw = ca.str("database", "var/ca/ca.sqlite3")
    if not raw.startswith(("postgresql://", "postgres://")):
        return None, None, None
    try:
        check_dsn(raw)
    except PostgresConfigError as exc:
        raise ConfigError(f"ca.database: {exc}") from None
    password_file = (ca.path("database_password_file")
                     if "database_password_file" in ca.values else None)
    password_env = ca.str("database_password_env", "") or None
    if password_file is not None and password_env:
        raise ConfigError("set either ca.database_password_file or ca.database_password_env")
    return raw, password_file, password_env


def _node_name(name: str) -> str:
    """A node name safe inside an owner id and its LIKE pattern (no ':', '%', '_'), short
    enough that `sekisho-ca:<node>:listen` fits PostgreSQL's 63-byte application_name
    uncut: other nodes tell a live node by it (ca.store_pg's dead-owner test)."""
    cleaned = re.sub(r"[^A-Za-z0-9.-]", "-", name)[:40]
    return cleaned or "local"
