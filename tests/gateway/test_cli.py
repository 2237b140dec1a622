"""`sekisho-gateway users ...`: the helpdesk's commands (§2.6, §2.7)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import cli
from tests.gateway.conftest import GatewayHarness


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
