"""`sekisho-gateway users ...`: the helpdesk's commands (§2.6, §2.7)."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from common.cli import display_width
from gateway import cli
from tests.gateway.conftest import BOTH_STORES, GatewayHarness


def _run(gw: GatewayHarness, *args: str) -> int:
    return cli.main(["--config", str(gw.ca.config_path), *args], clock=gw.clock)


class TestUsers:
    """Helpdesk commands, with their output and exit codes."""

    def test_add_prints_welcome_letter_once_R_PW_2(self, gw: GatewayHarness, capsys) -> None:
        """add: temporary login password + acquisition password from the CA."""
        assert _run(gw, "users", "add", "700001", "--name", "Sato Jiro", "--customer",
                    "XYZ Co", "--role", "admin") == 0
        out = capsys.readouterr().out
        temporary = re.search(r"temporary login password: (\S+)", out)
        acquisition = re.search(r"certificate acquisition password: (\S+)", out)
        assert temporary and acquisition
        user = gw.run(gw.users.get("700001"))
        assert user is not None and user.must_change and user.role.value == "admin"

    def test_duplicate_and_bad_role_are_one_line_errors(self, gw: GatewayHarness,
                                                        capsys) -> None:
        """A second add fails with one line and exit 1; a bad role is a usage error (2)."""
        gw.add_user("700002")
        assert _run(gw, "users", "add", "700002", "--name", "X", "--customer", "Y",
                    "--role", "admin") == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "already exists" in err
        with pytest.raises(SystemExit) as exited:
            _run(gw, "users", "add", "700003", "--name", "X", "--customer", "Y",
                 "--role", "boss")
        assert exited.value.code == 2

    def test_reset_unlock_disable_show_list_R_LOCK_1(self, gw: GatewayHarness,
                                                    capsys) -> None:
        """The lifecycle: lock by hand, unlock, reset, disable, with show/list."""
        gw.add_user("700004")
        for _ in range(3):
            gw.run(gw.auth.login("700004", "wrong-pass1"))
        assert _run(gw, "users", "show", "700004") == 0
        assert "locked" in capsys.readouterr().out
        assert _run(gw, "users", "unlock", "700004") == 0
        assert _run(gw, "users", "reset-password", "700004") == 0
        out = capsys.readouterr().out
        assert "new temporary login password" in out
        assert _run(gw, "users", "disable", "700004") == 0
        assert _run(gw, "users", "list") == 0
        assert "disabled" in capsys.readouterr().out
        assert _run(gw, "users", "unlock", "799999") == 1
        assert "no user 799999" in capsys.readouterr().err

    def test_missing_config_is_one_line(self, tmp_path: Path, capsys) -> None:
        """A missing configuration file: exit 1, one line."""
        assert cli.main(["--config", str(tmp_path / "none.toml"), "users", "list"]) == 1
        assert "does not exist" in capsys.readouterr().err


def test_module_entry_point_help() -> None:
    """`python -m gateway --help` works (the console script is the same function)."""
    result = subprocess.run([sys.executable, "-m", "gateway", "--help"], capture_output=True,
                            text=True, check=False, timeout=30)
    assert result.returncode == 0 and "users" in result.stdout


class TestHelpdeskWalkThrough:
    """Issue 15 items 12-14 and 18: what the helpdesk tripped over."""

    def test_unlock_of_a_user_not_locked_changes_nothing_R_LOCK_1(
            self, gw: GatewayHarness, capsys) -> None:
        """unlock on a user who is not locked says so and writes no audit row."""
        gw.add_user("700010")
        before = len(gw.run(gw.users.audit_entries()))
        assert _run(gw, "users", "unlock", "700010") == 0
        assert "700010 is not locked: nothing changed" in capsys.readouterr().out
        assert len(gw.run(gw.users.audit_entries())) == before
        for _ in range(3):
            gw.run(gw.auth.login("700010", "wrong-pass1"))
        assert _run(gw, "users", "unlock", "700010") == 0
        assert "user 700010 unlocked" in capsys.readouterr().out
        assert gw.run(gw.users.audit_entries())[-1].action == "user.unlocked"

    def test_show_and_list_label_japan_time_and_align_japanese_names(
            self, gw: GatewayHarness, capsys) -> None:
        """Times carry JST (what the customer sees) and UTC; columns line up by display
        width with Japanese names (two columns per character)."""
        gw.add_user("700011", name="法人ユーザー1", customer="株式会社ABC商事")
        gw.add_user("700012", name="Sato", customer="XYZ Co")
        gw.run(gw.auth.login("700011", "kj3h5gq8Wz"))
        assert _run(gw, "users", "show", "700011") == 0
        shown = capsys.readouterr().out
        local = gw.clock.now().astimezone(cli.JST)
        assert f"{local:%Y-%m-%d %H:%M} JST (" in shown and " UTC)" in shown
        assert _run(gw, "users", "list") == 0
        lines = capsys.readouterr().out.splitlines()
        header = lines[0]
        for line in lines[1:]:
            # "role" starts in the same terminal column on every line.
            role_col = display_width(line[:line.index("contractor")])
            assert role_col == display_width(header[:header.index("role")]), lines

    def test_operator_is_recorded_on_every_helpdesk_command(
            self, gw: GatewayHarness, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
        """--operator NAME (anywhere on the line), else the OS user, goes into the audit row."""
        assert _run(gw, "users", "add", "700013", "--name", "A", "--customer", "B",
                    "--role", "contractor", "--operator", "suzuki") == 0
        assert gw.run(gw.users.audit_entries())[-1].actor == "helpdesk:suzuki"
        assert _run(gw, "--operator", "tanaka", "users", "reset-password", "700013") == 0
        assert gw.run(gw.users.audit_entries())[-1].actor == "helpdesk:tanaka"
        monkeypatch.setenv("LOGNAME", "yamada")
        monkeypatch.setenv("USER", "yamada")
        assert _run(gw, "users", "disable", "700013") == 0
        assert gw.run(gw.users.audit_entries())[-1].actor == "helpdesk:yamada"
        with pytest.raises(SystemExit) as exited:
            _run(gw, "users", "disable", "700013", "--operator", "bad name;")
        assert exited.value.code == 2

    def test_audit_verify_and_show_with_filters_R_OPS_2(
            self, gw: GatewayHarness, capsys) -> None:
        """audit verify: intact, then exit 1 naming an edited row; audit show filters by
        user, action family, operator and time."""
        gw.add_user("700014")
        gw.add_user("700015")
        gw.run(gw.auth.login("700014", "wrong-pass1"))
        assert _run(gw, "users", "reset-password", "700015", "--operator", "sato") == 0
        capsys.readouterr()
        assert _run(gw, "audit", "verify") == 0
        assert "audit chain intact" in capsys.readouterr().out
        assert _run(gw, "audit", "show", "--user", "700014", "--action", "login") == 0
        out = capsys.readouterr().out
        assert "login.failed" in out and "700015" not in out and "user.added" not in out
        assert _run(gw, "audit", "show", "--operator-name", "sato", "--json") == 0
        shown = json.loads(capsys.readouterr().out)
        assert [e["action"] for e in shown] == ["password.reset"]
        tomorrow = (gw.clock.now() + timedelta(days=2)).astimezone(cli.JST).date().isoformat()
        assert _run(gw, "audit", "show", "--since", tomorrow) == 0
        assert capsys.readouterr().out.count("\n") == 1  # the header only
        database = gw.config.database
        with sqlite3.connect(database) as db:
            db.execute("UPDATE audit_log SET subject = 'someone' WHERE id = 2")
        assert _run(gw, "audit", "verify") == 1
        assert "row 2 was edited" in capsys.readouterr().out

    def test_config_anywhere_or_from_the_environment(
            self, gw: GatewayHarness, capsys, monkeypatch: pytest.MonkeyPatch,
            tmp_path: Path) -> None:
        """--config after the sub-command works, and SEKISHO_CONFIG names the file."""
        gw.add_user("700016")
        assert cli.main(["users", "show", "700016", "--config", str(gw.ca.config_path)],
                        clock=gw.clock) == 0
        assert "700016" in capsys.readouterr().out
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)  # no ./config.toml here
        monkeypatch.setenv("SEKISHO_CONFIG", str(gw.ca.config_path))
        assert cli.main(["users", "show", "700016"], clock=gw.clock) == 0
        assert "700016" in capsys.readouterr().out
        monkeypatch.delenv("SEKISHO_CONFIG")
        assert cli.main(["users", "show", "700016"], clock=gw.clock) == 1


@BOTH_STORES
class TestOfficerAcquisitionPassword:
    """Issue 15 item 15: `sekisho-ca acquisition-password` refuses a password the customer
    could never use (the gateway does not know the user)."""

    def test_unknown_or_disabled_gateway_user_refused_unless_forced_R_CERT_5(
            self, gw: GatewayHarness, capsys: pytest.CaptureFixture[str]) -> None:
        """The gateway's users decide: unknown and disabled IDs are refused with one line;
        --force issues anyway; a known user gets the password."""
        ca = gw.ca
        assert ca.cli("acquisition-password", "810001") == 1
        err = capsys.readouterr().err
        assert "810001 does not exist at the gateway" in err and err.count("\n") == 1
        assert ca.cli("acquisition-password", "810001", "--force") == 0
        assert "acquisition password for 810001:" in capsys.readouterr().out
        gw.add_user("810002")
        assert ca.cli("acquisition-password", "810002") == 0
        assert "acquisition password for 810002:" in capsys.readouterr().out
        gw.run(gw.users.disable("810002", actor="helpdesk:test"))
        assert ca.cli("acquisition-password", "810002") == 1
        assert "disabled at the gateway" in capsys.readouterr().err
