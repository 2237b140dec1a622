"""Prometheus metrics of one CA (R-REV-3): CRL freshness per generation, OCSP answers by
status, issuances and revocations, build information.

Each runtime has its own registry, so several CAs in one process (tests) do not collide.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from prometheus_client import CollectorRegistry, Counter, Gauge, Info, generate_latest

from ca.crl_publisher import PublishedCrl


def _version() -> str:
    try:
        return version("sekisho")
    except PackageNotFoundError:
        return "unknown"


class CaMetrics:
    """The metric families the CA exports at /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.crl_this_update = Gauge(
            "sekisho_crl_this_update_timestamp_seconds",
            "thisUpdate of the current CRL", ["generation"], registry=self.registry)
        self.crl_next_update = Gauge(
            "sekisho_crl_next_update_timestamp_seconds",
            "nextUpdate of the current CRL: alert well before time() reaches it",
            ["generation"], registry=self.registry)
        self.crl_entries = Gauge(
            "sekisho_crl_entries", "revoked entries in the current CRL", ["generation"],
            registry=self.registry)
        self.crl_number = Gauge(
            "sekisho_crl_number", "CRL number of the current CRL", ["generation"],
            registry=self.registry)
        self.ocsp_responses = Counter(
            "sekisho_ocsp_responses", "OCSP certificate statuses answered",
            ["status"], registry=self.registry)
        self.issued = Counter(
            "sekisho_certificates_issued", "certificates issued", registry=self.registry)
        self.revoked = Counter(
            "sekisho_certificates_revoked", "certificates revoked", registry=self.registry)
        self.leader = Gauge(
            "sekisho_ca_leader", "1 while this CA node leads the job on a PostgreSQL cluster",
            ["job", "node"], registry=self.registry)
        Info("sekisho_build", "build information", registry=self.registry).info(
            {"version": _version(), "component": "ca"})

    def crl_published(self, published: PublishedCrl) -> None:
        """Record a newly signed CRL."""
        labels = {"generation": published.generation}
        self.crl_this_update.labels(**labels).set(published.this_update.timestamp())
        self.crl_next_update.labels(**labels).set(published.next_update.timestamp())
        self.crl_entries.labels(**labels).set(published.entries)
        self.crl_number.labels(**labels).set(published.number)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
