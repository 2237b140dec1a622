"""Typed application state of the gateway (STYLE 8): one `web.AppKey` per service."""

from __future__ import annotations

from aiohttp import web

from gateway.auth import Authenticator
from gateway.ca_client import CaClient
from gateway.config import GatewayConfig
from gateway.proxy import Proxy
from gateway.revocation_client import RevocationChecker
from gateway.sessions import SessionStore
from gateway.store import UserBackend
from gateway.verify import CertificateVerifier
from policy.clock import Clock

CONFIG = web.AppKey("config", GatewayConfig)
CLOCK = web.AppKey("clock", Clock)  # type: ignore[type-abstract]  # a Protocol, on purpose
USERS = web.AppKey("users", UserBackend)  # type: ignore[type-abstract]  # a Protocol
AUTH = web.AppKey("auth", Authenticator)
SESSIONS = web.AppKey("sessions", SessionStore)
VERIFIER = web.AppKey("verifier", CertificateVerifier)
REVOCATION = web.AppKey("revocation", RevocationChecker)
CA = web.AppKey("ca", CaClient)
PROXY = web.AppKey("proxy", Proxy)
