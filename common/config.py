"""Reading config.toml: shared helpers; each process builds its own typed section from them.

Relative paths in the file are resolved against the directory holding the file, so
`--config /etc/sekisho/config.toml` and the repository's own file both work.
"""

from __future__ import annotations

import builtins
import re
import tomllib
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = Path("config.toml")


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which key to fix."""


@dataclass(frozen=True)
class Address:
    """A host and TCP port to listen on or connect to."""

    host: str
    port: int


@dataclass(frozen=True)
class RawConfig:
    """The parsed TOML plus the directory relative paths are resolved against."""

    data: dict[str, Any]
    base_dir: Path

    def section(self, name: str) -> Section:
        """Return the named top-level table (empty when absent)."""
        value = self.data.get(name, {})
        if not isinstance(value, dict):
            raise ConfigError(f"[{name}] must be a table")
        return Section(name, value, self.base_dir)


@dataclass(frozen=True)
class Section:
    """One TOML table with typed getters that fail with the key's full name."""

    name: builtins.str
    values: dict[builtins.str, Any]
    base_dir: Path

    def _get(self, key: builtins.str, default: Any, kinds: tuple[type, ...]) -> Any:
        value = self.values.get(key, default)
        if value is None or (isinstance(value, builtins.bool) and bool not in kinds):
            raise ConfigError(f"{self.name}.{key} is required")
        if not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise ConfigError(f"{self.name}.{key} must be {names}, not {value!r}")
        return value

    def str(self, key: builtins.str, default: builtins.str | None = None) -> builtins.str:
        """A string value."""
        return str(self._get(key, default, (builtins.str,)))

    def int(
        self, key: builtins.str, default: builtins.int | None = None, *, minimum: builtins.int = 0
    ) -> builtins.int:
        """An integer value, at least `minimum`."""
        value = int(self._get(key, default, (builtins.int,)))
        if value < minimum:
            raise ConfigError(f"{self.name}.{key} must be at least {minimum}, not {value}")
        return value

    def bool(self, key: builtins.str, default: builtins.bool | None = None) -> builtins.bool:
        """A boolean value."""
        return bool(self._get(key, default, (builtins.bool,)))

    def path(self, key: builtins.str, default: builtins.str | None = None) -> Path:
        """A path, resolved against the config file's directory."""
        return resolve_path(self.base_dir, self.str(key, default))

    def address(self, key: builtins.str, default: builtins.str | None = None) -> Address:
        """A "host:port" value."""
        return parse_address(self.str(key, default), f"{self.name}.{key}")

    def duration(self, key: builtins.str, default: builtins.str | None = None) -> timedelta:
        """A duration such as "90d", "24h", "30m", "45s"."""
        return parse_duration(self.str(key, default), f"{self.name}.{key}")

    def list_of_str(
        self, key: builtins.str, default: list[builtins.str] | None = None
    ) -> tuple[builtins.str, ...]:
        """A list of strings."""
        value = self._get(key, default if default is not None else [], (list,))
        if not all(isinstance(item, builtins.str) for item in value):
            raise ConfigError(f"{self.name}.{key} must be a list of strings")
        return tuple(value)

    def optional_datetime(self, key: builtins.str) -> datetime | None:
        """A TOML date or datetime (naive values are taken as UTC), or None when absent."""
        value = self.values.get(key)
        if value is None:
            return None
        return to_utc_datetime(value, f"{self.name}.{key}")

    def table(self, key: builtins.str) -> Section:
        """A nested table (empty when absent)."""
        value = self.values.get(key, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{self.name}.{key} must be a table")
        return Section(f"{self.name}.{key}", value, self.base_dir)


def load_raw(path: Path) -> RawConfig:
    """Parse the TOML file at `path`; a missing or malformed file is a ConfigError."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from None
    return RawConfig(data=data, base_dir=path.resolve().parent)


def resolve_path(base_dir: Path, value: str) -> Path:
    """Resolve `value` against `base_dir` unless it is absolute."""
    candidate = Path(value).expanduser()
    return candidate if candidate.is_absolute() else base_dir / candidate


def parse_address(value: str, key: str = "address") -> Address:
    """Parse "host:port" ("[::1]:8443" for IPv6)."""
    match = re.fullmatch(r"\[?([^\[\]]+?)\]?:(\d{1,5})", value.strip())
    if not match or not 0 <= int(match.group(2)) <= 65535:
        raise ConfigError(f"{key} must look like 127.0.0.1:8443, not {value!r}")
    return Address(match.group(1), int(match.group(2)))


_DURATION_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


def parse_duration(value: str, key: str = "duration") -> timedelta:
    """Parse "90d", "24h", "30m", "45s" or combinations such as "1h30m"."""
    parts = re.findall(r"(\d+)\s*([dhms])", value)
    if not parts or re.sub(r"\s+", "", value) != "".join(n + u for n, u in parts):
        raise ConfigError(f"{key} must be a duration like 24h, 30m or 90d, not {value!r}")
    return timedelta(**{_DURATION_UNITS[u]: 0 for u in "dhms"}) + sum(
        (timedelta(**{_DURATION_UNITS[u]: int(n)}) for n, u in parts), timedelta()
    )


def to_utc_datetime(value: object, key: str) -> datetime:
    """Turn a TOML date/datetime or ISO string into an aware UTC datetime."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ConfigError(f"{key} must be a date like 2021-02-24, not {value!r}") from None
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, date):
        return datetime.combine(value, time(0, 0), tzinfo=UTC)
    raise ConfigError(f"{key} must be a date like 2021-02-24, not {value!r}")
