"""The gateway's HTTP client for the CA: internal API (bearer token) and public endpoints.

The gateway never imports `ca/` or `keys/` (STYLE 1); everything goes over HTTP. Errors of
the internal API arrive as JSON `{"error": code, "message": ...}` and become `CaRefused`; a
CA that cannot be reached (or answers 5xx) becomes `CaUnavailable`.
"""

from __future__ import annotations

import base64
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp

from gateway.errors import GatewayError


class CaUnavailable(GatewayError):
    """The CA did not answer (connection refused, timeout, 5xx)."""

    status = 503
    code = "ca_unavailable"


class CaRefused(GatewayError):
    """The CA answered with an error; `code` is the CA's error code, `ca_status` its status."""

    status = 409
    code = "ca_refused"

    def __init__(self, message: str, *, code: str, ca_status: int, body: dict[str, Any]) -> None:
        super().__init__(message, code=code)
        self.ca_status = ca_status
        self.body = body


@dataclass(frozen=True)
class Delivered:
    """A certificate the CA issued, with its PKCS#12 file."""

    serial: str
    user_id: str
    not_after: str
    pkcs12: bytes


@dataclass(frozen=True)
class RevocationEvent:
    """One entry of the CA's revocation feed."""

    seq: int
    serial: str
    user_id: str
    fingerprint_sha256: str


class CaClient:
    """Calls the CA; one pooled aiohttp session, closed by `close()`."""

    def __init__(self, internal_url: str, public_url: str, token: str, *,
                 timeout: float = 10.0, internal_ssl: ssl.SSLContext | None = None) -> None:
        self.internal_url = internal_url.rstrip("/")
        # https: this context (a pinned certificate) or, without one, the system's CAs.
        self._internal_ssl: ssl.SSLContext | bool = internal_ssl or True
        self.public_url = public_url.rstrip("/")
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=min(timeout, 3.0))
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64), timeout=self._timeout
            )
        return self._session

    async def close(self) -> None:
        """Close the pooled connections."""
        if self._session is not None:
            await self._session.close()

    async def _api(self, method: str, path: str, *, json: Any = None,
                   client_timeout: aiohttp.ClientTimeout | None = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self._token}"}
        try:
            async with self._http().request(
                method, self.internal_url + path, json=json, headers=headers,
                timeout=client_timeout or self._timeout, ssl=self._internal_ssl,
            ) as response:
                try:
                    body = await response.json(content_type=None)
                except ValueError:
                    body = {}
                if not isinstance(body, dict):
                    body = {}
                if response.status >= 500:
                    raise CaUnavailable(f"the CA answered {response.status}")
                if response.status >= 400:
                    raise CaRefused(str(body.get("message", "refused")),
                                    code=str(body.get("error", "refused")),
                                    ca_status=response.status, body=body)
                return body
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise CaUnavailable(f"the CA cannot be reached: {type(exc).__name__}") from None

    async def acquire(self, user_id: str, acquisition_password: str, *,
                      ticket: str | None = None) -> Delivered:
        """POST /v1/acquire: first acquisition or re-acquisition (R-CERT-4, R-CERT-5); with a
        `ticket` from `open_acquisition` the CA does not check the password again."""
        request: dict[str, Any] = {"user_id": user_id,
                                   "acquisition_password": acquisition_password,
                                   "actor": "gateway"}
        if ticket is not None:
            request["ticket"] = ticket
        body = await self._api("POST", "/v1/acquire", json=request)
        return _delivered(body)

    async def open_acquisition(self, user_id: str, acquisition_password: str) -> str:
        """POST /v1/acquisition-tickets: the CA checks the acquisition password (counted,
        locking) and returns a single-use ticket for `acquire` (issue 10 item 3)."""
        body = await self._api("POST", "/v1/acquisition-tickets", json={
            "user_id": user_id, "acquisition_password": acquisition_password,
            "actor": "gateway"})
        return str(body["ticket"])

    async def renew(self, serial: str, password: str) -> Delivered:
        """POST /v1/renew: a new certificate, PKCS#12 encrypted with `password` (R-CERT-6)."""
        body = await self._api("POST", "/v1/renew",
                               json={"serial": serial, "password": password, "actor": "gateway"})
        return _delivered(body)

    async def issue_acquisition_password(self, user_id: str, *, actor: str) -> str:
        """POST /v1/users/{id}/acquisition-password (the welcome letter's second secret)."""
        body = await self._api("POST", f"/v1/users/{user_id}/acquisition-password",
                               json={"actor": actor})
        return str(body["acquisition_password"])

    async def revocations(
        self, after: int | str, wait: float
    ) -> tuple[int, list[RevocationEvent]]:
        """GET /v1/revocations?after=N&wait=S (long poll); returns (last_seq, events)."""
        timeout = aiohttp.ClientTimeout(total=wait + 10, connect=3)
        body = await self._api("GET", f"/v1/revocations?after={after}&wait={wait:g}",
                               client_timeout=timeout)
        events = [
            RevocationEvent(int(r["seq"]), str(r["serial"]), str(r["user_id"]),
                            str(r["fingerprint_sha256"]).lower())
            for r in body.get("revocations", [])
        ]
        return int(body.get("last_seq", after)), events

    async def fetch(self, url: str, *, seconds: float, method: str = "GET",
                    data: bytes | None = None, content_type: str | None = None) -> bytes:
        """A public HTTP resource (OCSP, CRL, trust bundle); CaUnavailable unless 200."""
        headers = {"Content-Type": content_type} if content_type else {}
        try:
            async with self._http().request(
                method, url, data=data, headers=headers,
                timeout=aiohttp.ClientTimeout(total=seconds),
            ) as response:
                if response.status != 200:
                    raise CaUnavailable(f"{url} answered {response.status}")
                return await response.content.read(8 * 1024 * 1024)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise CaUnavailable(f"{url} cannot be reached: {type(exc).__name__}") from None

    async def trust_bundle(self) -> bytes:
        """GET /certs/bundle.pem: every issuing generation and the root."""
        return await self.fetch(self.public_url + "/certs/bundle.pem", seconds=10)


def _delivered(body: dict[str, Any]) -> Delivered:
    return Delivered(serial=str(body["serial"]), user_id=str(body["user_id"]),
                     not_after=str(body["not_after"]),
                     pkcs12=base64.b64decode(body["pkcs12"]))
