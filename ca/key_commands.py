"""`sekisho-ca keys list | check | import`: the key-custody ceremony and monitoring commands
(SPEC R-KEY-1). Registered by ca/cli.py.

`keys check` is a Nagios-style check: one status line first, exit 0 OK, 1 WARNING,
2 CRITICAL, 3 UNKNOWN.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from ca.config import CaConfig, load_ca_config
from ca.runtime import open_hierarchy
from common.config import ConfigError
from keys.custody import close_keystore, import_file_key, token_store_of
from keys.errors import KeyCustodyError
from keys.file_signer import load_passphrase
from keys.hierarchy import ROOT_LABEL, Hierarchy
from keys.pkcs11_signer import Pkcs11KeyStore, signature_round_trip
from policy.clock import Clock

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
_STATUS = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}


def hierarchy_labels(hierarchy: Hierarchy) -> list[str]:
    """root, then each generation and its responder: every key the CA signs with."""
    labels = [ROOT_LABEL]
    for name in hierarchy.generation_names():
        labels += [name, f"{name}-ocsp"]
    return labels


def _where(config: CaConfig, label: str) -> str:
    if config.keys.backend == "file" or (
            label.endswith("-ocsp") and config.keys.ocsp_keys == "file"):
        return "file"
    return "token"


async def cmd_keys_list(config: CaConfig, clock: Clock, args: argparse.Namespace) -> int:
    """Labels, algorithms and the attributes that prove the keys cannot leave the token."""
    hierarchy = open_hierarchy(config)
    try:
        token_store = token_store_of(hierarchy.keystore)
        rows: list[dict[str, Any]] = []
        if isinstance(token_store, Pkcs11KeyStore):
            print(f"token {config.keys.token_label!r} via {config.keys.pkcs11_module}")
            for info in token_store.describe():
                rows.append({
                    "label": info.label,
                    "object": token_store.object_label(info.label),
                    "algorithm": info.algorithm,
                    "id": info.key_id[:16],
                    "attributes": " ".join([
                        f"CKA_TOKEN={_yes(info.token)}",
                        f"CKA_SENSITIVE={_yes(info.sensitive)}",
                        f"CKA_EXTRACTABLE={_yes(info.extractable)}",
                        f"CKA_ALWAYS_SENSITIVE={_yes(info.always_sensitive)}",
                        f"CKA_NEVER_EXTRACTABLE={_yes(info.never_extractable)}",
                        f"CKA_LOCAL={_yes(info.local)}",
                    ]),
                    "custody": ("generated in token" if info.local and info.never_extractable
                                else "imported, non-extractable" if info.non_extractable
                                else "EXTRACTABLE"),
                })
        for label in hierarchy_labels(hierarchy):
            if _where(config, label) == "file":
                rows.append({"label": label, "object": f"{label}.key.pem",
                             "algorithm": _certificate_curve(hierarchy, label), "id": "",
                             "attributes": "encrypted PKCS#8 file, mode 0600",
                             "custody": "file"})
        if not rows:
            print("no keys")
            return 0
        from ca.cli import _print_table

        _print_table(rows, [("label", "LABEL"), ("object", "OBJECT"),
                            ("algorithm", "ALG"), ("id", "CKA_ID"), ("custody", "CUSTODY"),
                            ("attributes", "ATTRIBUTES")])
        return 0
    finally:
        close_keystore(hierarchy.keystore)


def _yes(value: bool) -> str:
    return "true" if value else "false"


def _certificate_curve(hierarchy: Hierarchy, label: str) -> str:
    try:
        key = hierarchy.load_certificate(label).public_key()
    except KeyCustodyError:
        return "?"
    return {"secp256r1": "p256", "secp384r1": "p384"}.get(
        getattr(getattr(key, "curve", None), "name", ""), "?")


@dataclass
class CheckReport:
    """The outcome of `keys check`: a Nagios status and one line per key."""

    code: int = OK
    lines: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    def worse(self, code: int, line: str) -> None:
        """Record a problem (the worst status wins)."""
        self.code = max(self.code, code)
        self.lines.append(line)

    def summary(self) -> str:
        """The first line monitoring shows."""
        status = _STATUS[self.code]
        if self.code == OK:
            return (f"KEYS {status} - {len(self.checked)} keys sign and verify: "
                    + ", ".join(self.checked))
        return f"KEYS {status} - " + "; ".join(self.lines)


def check_keys(config: CaConfig, clock: Clock) -> CheckReport:
    """Sign a fresh challenge with every key and verify it with the key's certificate."""
    report = CheckReport()
    try:
        hierarchy = open_hierarchy(config)
    except KeyCustodyError as exc:
        report.worse(CRITICAL, str(exc))
        return report
    try:
        if not hierarchy.is_initialised():
            report.worse(UNKNOWN, f"no CA in {config.keys.directory}; run `sekisho-ca init`")
            return report
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        now = clock.now()
        for label in hierarchy_labels(hierarchy):
            try:
                signer = hierarchy.keystore.load(label)
                signature_round_trip(signer)
                certificate = hierarchy.load_certificate(label)
            except (KeyCustodyError, ValueError) as exc:
                report.worse(CRITICAL, f"{label}: {exc}")
                continue
            if certificate.public_key().public_bytes(der, spki) != (
                    signer.public_key().public_bytes(der, spki)):
                report.worse(CRITICAL, f"{label}: the key does not match its certificate")
                continue
            if certificate.not_valid_after_utc <= now:
                report.worse(WARNING, f"{label}: its certificate expired "
                             f"{certificate.not_valid_after_utc:%Y-%m-%d}")
                continue
            report.checked.append(f"{label} ({_where(config, label)})")
        return report
    finally:
        close_keystore(hierarchy.keystore)


def run_keys_check(args: argparse.Namespace, clock: Clock) -> int:
    """`sekisho-ca keys check`: never raises; exit 3 (UNKNOWN) when it cannot tell."""
    try:
        config = load_ca_config(args.config)
        report = check_keys(config, clock)
    except (OSError, ConfigError, ValueError) as exc:
        report = CheckReport()
        report.worse(UNKNOWN, str(exc))
    print(report.summary())
    for line in report.lines if report.code != OK else []:
        print(f"  {line}")
    return report.code


async def cmd_keys_import(config: CaConfig, clock: Clock, args: argparse.Namespace) -> int:
    """Move a file key into the token (non-extractable from then on); the file is deleted
    unless --keep-file."""
    if _where(config, args.label) == "file":
        raise KeyCustodyError(
            f"{args.label} stays a file key with this configuration (keys.backend = "
            f'"{config.keys.backend}", keys.ocsp_keys = "{config.keys.ocsp_keys}"); nothing '
            "imported")
    hierarchy = open_hierarchy(config)
    try:
        token_store = token_store_of(hierarchy.keystore)
        path = Path(args.file) if args.file else config.keys.directory / f"{args.label}.key.pem"
        passphrase = load_passphrase(config.keys.passphrase_file, config.keys.passphrase_env)
        import_file_key(path, passphrase, token_store, args.label)
    finally:
        close_keystore(hierarchy.keystore)
    assert isinstance(token_store, Pkcs11KeyStore)
    print(f"imported {path} into token {config.keys.token_label!r} as "
          f"{token_store.object_label(args.label)!r} (CKA_SENSITIVE=true, "
          "CKA_EXTRACTABLE=false); a test signature verified")
    if args.keep_file:
        print(f"kept {path}: destroy it (or lock it away) as the ceremony says", file=sys.stderr)
    else:
        path.unlink()
        print(f"deleted {path}")
    return 0


def add_parser(commands: Any) -> None:
    """Register `keys list | check | import` on the `sekisho-ca` parser."""
    keys = commands.add_parser("keys", help="key custody: list, check, import")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    keys_sub.add_parser("list", help="labels, algorithms, non-extractability").set_defaults(
        handler=cmd_keys_list)
    keys_sub.add_parser("check", help="sign and verify with every key (Nagios exit codes)"
                        ).set_defaults(handler=None)
    imp = keys_sub.add_parser("import", help="move a file key into the PKCS#11 token")
    imp.add_argument("label", help="root, gN or gN-ocsp")
    imp.add_argument("--file", help="the encrypted key file (default: <keys.directory>/LABEL"
                                    ".key.pem)")
    imp.add_argument("--keep-file", action="store_true",
                     help="keep the file after the import (default: delete it)")
    imp.set_defaults(handler=cmd_keys_import)
