"""What both command lines (`sekisho-ca`, `sekisho-gateway`) share: the options every command
takes, wherever they are written, and the operator recorded in the audit trail.

* `--config PATH` is accepted before or after the sub-command (`sekisho-ca revoke ... --config
  X`), and `SEKISHO_CONFIG` names the file when no option does (issue 15 item 18); the default
  is `./config.toml`.
* `--operator NAME` names the person running a helpdesk or officer command; without it, the
  operating-system user. Audit rows carry `helpdesk:<name>` / `officer:<name>` (issue 15
  item 14), so the trail says who, not only which tool.
* Terminal tables align by display width: a Japanese character takes two columns.
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path

from common.config import DEFAULT_CONFIG

CONFIG_ENV = "SEKISHO_CONFIG"
_OPERATOR = re.compile(r"[A-Za-z0-9._@-]{1,64}")


def _operator(value: str) -> str:
    if not _OPERATOR.fullmatch(value):
        raise argparse.ArgumentTypeError(
            "an operator name is 1-64 letters, digits or . _ @ - (e.g. a staff ID)")
    return value


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """Add `--config` and `--operator` to `parser` and every sub-command under it.

    Each is `SUPPRESS`ed by default, so a value given at any level survives the parsing of
    the levels below; `config_path` and `operator_name` supply the defaults.
    """
    parser.add_argument("--config", type=Path, default=argparse.SUPPRESS,
                        help=f"configuration file (default: ${CONFIG_ENV} or ./config.toml)")
    parser.add_argument("--operator", type=_operator, default=argparse.SUPPRESS,
                        help="who runs this command, for the audit trail "
                             "(default: the operating-system user)")
    # argparse has no public walk of sub-commands: its own action list and class.
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                add_common_options(sub)


def config_path(args: argparse.Namespace) -> Path:
    """`--config`, else `$SEKISHO_CONFIG`, else ./config.toml."""
    given = getattr(args, "config", None)
    if given is not None:
        return Path(given)
    from_env = os.environ.get(CONFIG_ENV, "").strip()
    return Path(from_env) if from_env else DEFAULT_CONFIG


def operator_name(args: argparse.Namespace) -> str:
    """`--operator`, else the operating-system user (a name that fits the audit trail)."""
    given = getattr(args, "operator", None)
    if given:
        return str(given)
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's anonymous UID)
        user = f"uid{os.getuid()}"
    return user if _OPERATOR.fullmatch(user) else "unknown"


def display_width(text: str) -> int:
    """Terminal columns `text` takes: East Asian wide and full-width characters count two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def ljust_display(text: str, width: int) -> str:
    """`text` padded with spaces to `width` display columns."""
    return text + " " * max(0, width - display_width(text))


def table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Lines of a left-aligned table, columns two spaces apart, aligned by display width."""
    widths = [max([display_width(c), *(display_width(r[i]) for r in rows)])
              for i, c in enumerate(columns)]
    return ["  ".join(ljust_display(v, w) for v, w in zip(line, widths, strict=True)).rstrip()
            for line in [list(columns), *[list(r) for r in rows]]]
