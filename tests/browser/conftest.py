"""Fixtures for the browser tests: headless Debian Chromium driven by Playwright's sync API
against the real CA, demo backend and gateway on loopback (tests.gateway.conftest).

No browser is downloaded: Playwright launches `/usr/bin/chromium` (`.ci/run` installs it).
Client certificates are handed to the browser context (`client_certificates`), which is how
Playwright presents them over TLS; `ignore_https_errors` because the gateway's demo server
certificate is self-signed. Screenshots of every visited page go to
`test-artifacts/browser/<test>/` (git-ignored).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from policy.clock import FakeClock
from tests.gateway.conftest import Enrolled, GatewayHarness, start_gateway

T = TypeVar("T")
CHROMIUM = os.environ.get("SEKISHO_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
DESKTOP = {"width": 1024, "height": 768}  # the manual's minimum resolution (§1.2.2)
PHONE = {"width": 390, "height": 844}
# Playwright's waits: generous for a loaded CI machine, still far below the suite's budget.
TIMEOUT_MS = 15_000

try:
    from playwright import sync_api
except ImportError:  # a dev dependency; without it the browser tests skip
    sync_api = None


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One headless Chromium per module.

    Not per session: Playwright's sync API keeps an event loop running in the test thread
    until it stops, and the other test modules need that thread free for their own loops.
    """
    missing = ("the playwright package is missing (pip install -e '.[dev]')" if sync_api is None
               else f"{CHROMIUM} is missing (apt-get install chromium)"
               if not Path(CHROMIUM).exists() else None)
    if missing:
        # CI (.ci/run installs both) must not pass by skipping; a developer's machine may.
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def off_thread(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run `function` in a fresh thread and return its result.

    Playwright's sync API keeps an event loop running in the test thread, so code that calls
    `asyncio.run` (`sekisho-ca init`, the helpdesk CLI) must run elsewhere.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(function, *args, **kwargs).result(timeout=120)


def start_site(directory: Path, start: datetime, *, tables: str = "") -> Iterator[GatewayHarness]:
    """Start CA + demo backend + gateway with the clock at `start`; stop them afterwards."""
    harness = off_thread(start_gateway, directory, FakeClock(start), tables=tables)
    try:
        yield harness
    finally:
        harness.stop()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayHarness]:
    """CA + demo backend + gateway for the module, on a clock starting at the real time."""
    yield from start_site(tmp_path_factory.mktemp("browser"),
                      datetime.now(UTC).replace(microsecond=0))


@pytest.fixture(scope="module")
def site_in_the_past(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayHarness]:
    """The same, with the clock starting 345 days ago: a certificate issued at the start is
    20 days from expiry at the real now, so the renewal screens show today's dates."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=345)
    yield from start_site(tmp_path_factory.mktemp("browser-past"), start)


@dataclass
class Shots:
    """Numbered full-page screenshots of one test, under test-artifacts/browser/<test>/."""

    folder: Path
    count: int = 0
    taken: list[Path] = field(default_factory=list)

    def __call__(self, page: Any, label: str) -> Path:
        self.count += 1
        path = self.folder / f"{self.count:02d}-{label}.png"
        page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)
        return path


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Shots:
    """A fresh screenshot folder named after the test."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    folder = ARTIFACTS / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return Shots(folder)


def open_context(chromium: Any, site: GatewayHarness, *, pfx: Path | None = None,
                 passphrase: str | None = None, who: Enrolled | None = None,
                 viewport: dict[str, int] | None = None, **options: Any) -> Any:
    """A fresh browser profile presenting a PKCS#12 file, PEM files, or no certificate."""
    certificates: list[dict[str, str]] = []
    if pfx is not None:
        certificates.append({"origin": site.url, "pfxPath": str(pfx),
                             "passphrase": passphrase or ""})
    elif who is not None:
        certificates.append({"origin": site.url, "certPath": str(who.cert_file),
                             "keyPath": str(who.key_file)})
    context = chromium.new_context(
        ignore_https_errors=True, viewport=viewport or DESKTOP, locale="ja-JP",
        timezone_id="Asia/Tokyo", accept_downloads=True,
        client_certificates=certificates or None, **options)
    context.set_default_timeout(TIMEOUT_MS)
    return context
