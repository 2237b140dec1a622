"""A throwaway SoftHSM2 token for the PKCS#11 tests (Debian's softhsm2; R-KEY-1).

One token per test session in a temporary folder (`SOFTHSM2_CONF` points at a config with its
own tokendir): a loaded PKCS#11 module does not see tokens created after it was initialised,
so tests share the token and each CA gets its own key-label prefix instead.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SOFTHSM_MODULES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
)
TOKEN_LABEL = "sekisho-test"


def softhsm_module() -> str | None:
    """The SoftHSM2 module's path, or None when softhsm2 is not installed."""
    return next((path for path in SOFTHSM_MODULES if Path(path).exists()), None)


@dataclass(frozen=True)
class SoftHsm:
    """A SoftHSM2 token ready for use: module path, token label, PIN, its config file."""

    module: str
    token_label: str
    pin: str
    so_pin: str
    conf: Path

    def pin_file(self, directory: Path) -> Path:
        """Write the user PIN to a 0600 file in a 0700 folder under `directory`."""
        secrets_dir = directory / "var" / "secrets"
        secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = secrets_dir / "token-pin"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(self.pin + "\n")
        return path

    def keys_config(self, directory: Path, label_prefix: str, *, ocsp_keys: str = "token",
                    ) -> str:
        """The `[keys]` lines of a CA whose keys live in this token."""
        return (f'backend = "pkcs11"\npkcs11_module = "{self.module}"\n'
                f'token_label = "{self.token_label}"\npin_file = "{self.pin_file(directory)}"\n'
                f'pin_env = "SEKISHO_TEST_UNSET_PIN"\nkey_label_prefix = "{label_prefix}"\n'
                f'ocsp_keys = "{ocsp_keys}"\n')

    def pkcs11_tool(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run OpenSC's pkcs11-tool against the token (a second, independent client)."""
        return subprocess.run(
            ["pkcs11-tool", "--module", self.module, "--token-label", self.token_label,
             *args], capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, "SOFTHSM2_CONF": str(self.conf)},
        )


def create_softhsm(directory: Path) -> SoftHsm:
    """Initialise a fresh token in `directory` and point this process at it."""
    module = softhsm_module()
    if module is None or shutil.which("softhsm2-util") is None:
        raise RuntimeError("softhsm2 is not installed (apt-get install softhsm2 opensc)")
    tokens = directory / "tokens"
    tokens.mkdir(mode=0o700, parents=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n"
                    "log.level = ERROR\nslots.removable = false\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    pin, so_pin = secrets.token_hex(8), secrets.token_hex(8)
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", TOKEN_LABEL, "--pin", pin,
         "--so-pin", so_pin], check=True, capture_output=True, timeout=60,
    )
    return SoftHsm(module, TOKEN_LABEL, pin, so_pin, conf)
