"""kill -9 of the real gateway process between a login try's count and its result
(R-FAULT-3): after the restart the user is never "busy" (429) for good, and no fourth
password is ever evaluated. The CA and the gateway both run as real processes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import pkcs12

from common.passwords import PasswordHasher
from gateway.auth import Authenticator
from gateway.users import UserStore
from policy.clock import SystemClock
from policy.password import PasswordPolicy
from tests.gateway.conftest import (
    GOOD_PASSWORD,
    Browser,
    Enrolled,
    Page,
    csrf_of,
    gateway_section,
    write_client_pem,
)
from tests.support.faults import CaProcess
from tests.support.servers import free_port

USER = "840001"


def _add_user(database: Path) -> None:
    """The helpdesk creates the user; the user sets GOOD_PASSWORD (in-process, own store)."""

    async def add() -> None:
        store = await UserStore.open(database, SystemClock())
        hasher = PasswordHasher(time_cost=1, memory_cost_kib=1024)
        try:
            auth = Authenticator(store, hasher, PasswordPolicy(), clock=SystemClock())
            _, temporary = await auth.add_user(USER, name="Tanaka Taro", customer="ABC",
                                               role="contractor", actor="helpdesk:test")
            result = await auth.change_password(USER, temporary, GOOD_PASSWORD)
            assert result.status.value == "changed", result
        finally:
            await store.close()
            hasher.close()

    asyncio.run(add())


class GatewayProcess:
    """`sekisho-gateway serve` as a child process."""

    def __init__(self, config: Path, port: int, directory: Path) -> None:
        self.config, self.port, self.directory = config, port, directory
        self.process: subprocess.Popen[bytes] | None = None
        self.marker = directory / "gateway-fault-reached"

    def start(self, fault: str | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEKISHO_FAULT")}
        if fault:
            env.update(SEKISHO_FAULT=fault, SEKISHO_FAULT_MARKER=str(self.marker))
        self.marker.unlink(missing_ok=True)
        with (self.directory / "gateway.log").open("ab") as log:
            self.process = subprocess.Popen(
                [str(Path(sys.executable).parent / "sekisho-gateway"), "--config",
                 str(self.config), "serve"], stdout=log, stderr=subprocess.STDOUT, env=env,
                cwd=self.directory)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.directory / "gateway.log").read_text()
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=1):
                return
            time.sleep(0.05)
        raise AssertionError("the gateway did not start")

    def wait_fault(self) -> None:
        deadline = time.monotonic() + 30
        while not (self.marker.exists() and self.marker.read_text()):
            assert time.monotonic() < deadline, (self.directory / "gateway.log").read_text()
            time.sleep(0.02)

    def kill9(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


def _enrolled(directory: Path, pkcs12_b64: str, acquisition: str) -> Enrolled:
    """PEM files of the delivered PKCS#12, for the client's TLS context."""
    key, cert, _ = pkcs12.load_key_and_certificates(base64.b64decode(pkcs12_b64),
                                                    acquisition.encode())
    assert key is not None and cert is not None
    return write_client_pem(directory / "clients", USER, GOOD_PASSWORD, cert, key)


def _login(url: str, server_cert: Path, who: Enrolled, password: str) -> Page:
    context = ssl.create_default_context(cafile=str(server_cert))
    context.load_cert_chain(who.cert_file, who.key_file)

    async def run() -> Page:
        async with Browser(url, context, who) as browser:
            form = await browser.get("/auth/login")
            if form.status != 200:  # a locked user gets the lock page before any password
                return form
            return await browser.request("POST", "/auth/login", allow_redirects=False,
                                         data={"csrf": csrf_of(form.text), "password": password})

    return asyncio.run(run())


@pytest.mark.parametrize(("earlier_failures", "expected"), [(0, 303), (2, 423)])
def test_login_try_of_a_killed_gateway_counts_as_a_failure_R_FAULT_3(
        ca_process: CaProcess, earlier_failures: int, expected: int) -> None:
    """kill -9 of the gateway after a login try is counted, before its password is checked.
    After the restart the right password is answered at once - logged in (no earlier
    failures), or the lock page (two earlier failures: the dead try was the third) - never
    the 429 "try again in a moment" that used to last forever."""
    directory = ca_process.directory
    port = free_port()
    text = ca_process.config_path.read_text() + gateway_section(port, free_port())
    text = text.replace("#CA-URLS#", f'ca_public_url = "{ca_process.public_url}"\n'
                        f'ca_internal_url = "{ca_process.internal_url}"')
    ca_process.config_path.write_text(text)
    ca = ca_process.start()
    _add_user(directory / "var" / "gateway" / "gateway.sqlite3")
    acquisition = ca.acquisition_password(USER)
    answer = ca.acquire(USER, acquisition)
    assert answer.status == 201, answer
    who = _enrolled(directory, answer.body["pkcs12"], acquisition)
    gateway = GatewayProcess(ca.config_path, port, directory)
    url = f"https://127.0.0.1:{port}"
    server_cert = directory / "var" / "gateway" / "tls" / "server.crt.pem"
    try:
        gateway.start(fault=f"gateway.after_attempt_counted::{earlier_failures + 1}")
        for _ in range(earlier_failures):
            assert _login(url, server_cert, who, "wrong-password-9").status == 401
        def doomed_login() -> None:
            with contextlib.suppress(Exception):  # the connection dies with the gateway
                _login(url, server_cert, who, GOOD_PASSWORD)

        thread = threading.Thread(target=doomed_login, daemon=True)
        thread.start()
        gateway.wait_fault()
        gateway.kill9()
        thread.join(30)
        gateway.start()
        page = _login(url, server_cert, who, GOOD_PASSWORD)
        assert page.status == expected, (page.status, page.error, page.text[:300])
        again = _login(url, server_cert, who, GOOD_PASSWORD)
        assert again.status != 429
    finally:
        gateway.kill9()
