"""Cutover configuration shared by the CA and the gateway (R-CUT-1).

```toml
[generations.g1]
retire_at = 2021-02-24T00:00:00+09:00   # g1 certificates are refused from then; g1 signs no more
[generations.g2]
issues_from = 2021-02-24T00:00:00+09:00 # g2 issues new certificates from then

[[cutover]]
name = "notice-2021"
issued_before = 2020-11-12T00:00:00+09:00  # "validity started on or before 2020-11-11" (JST)
effective_at = 2021-02-24T00:00:00+09:00   # refused from, and re-acquisition opens on, this day
```

Plain dates (`2021-02-24`) mean midnight UTC; write an offset to mean local midnight.
A generation's `retire_at` is a cutover of its own (every certificate of that generation).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from common.config import ConfigError, RawConfig, Section
from policy.cutover import Cutover


@dataclass(frozen=True)
class GenerationDates:
    """When a generation starts issuing and when its certificates stop being accepted."""

    issues_from: datetime | None = None
    retire_at: datetime | None = None


def generation_dates(raw: RawConfig) -> dict[str, GenerationDates]:
    """The `[generations.<name>]` tables."""
    section = raw.section("generations")
    dates = {}
    for name in section.values:
        table = section.table(name)
        dates[name] = GenerationDates(table.optional_datetime("issues_from"),
                                      table.optional_datetime("retire_at"))
    return dates


def load_cutovers(raw: RawConfig) -> list[Cutover]:
    """Every configured cutover, the generations' retire dates included."""
    cutovers = [
        Cutover(f"{name}-retired", effective_at=dates.retire_at, generation=name)
        for name, dates in generation_dates(raw).items() if dates.retire_at is not None
    ]
    tables = raw.data.get("cutover", [])
    if not isinstance(tables, list):
        raise ConfigError("[[cutover]] must be an array of tables")
    for index, table in enumerate(tables):
        section = Section(f"cutover[{index}]", table, raw.base_dir)
        effective = section.optional_datetime("effective_at")
        if effective is None:
            raise ConfigError(f"cutover[{index}].effective_at is required")
        try:
            cutovers.append(Cutover(
                name=section.str("name", f"cutover-{index + 1}"),
                effective_at=effective,
                issued_before=section.optional_datetime("issued_before"),
                generation=section.values.get("generation"),
            ))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return cutovers
