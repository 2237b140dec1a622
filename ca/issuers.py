"""The issuing generations the CA signs with, and which one issues at a given time."""

from __future__ import annotations

from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca.errors import Conflict, NotFound
from common.cutovers import GenerationDates
from keys.hierarchy import Hierarchy, IssuerGeneration


class Issuers:
    """All generations under one root, loaded from key custody at start-up."""

    def __init__(
        self, hierarchy: Hierarchy, schedules: dict[str, GenerationDates] | None = None
    ) -> None:
        self._hierarchy = hierarchy
        self._schedules = schedules or {}
        self.root: x509.Certificate = hierarchy.root_certificate()
        self.generations: dict[str, IssuerGeneration] = {
            name: hierarchy.load_generation(name) for name in hierarchy.generation_names()
        }
        if not self.generations:
            raise NotFound("no issuing generation exists; run `sekisho-ca init`")

    def schedule(self, name: str) -> GenerationDates:
        """The configured dates of a generation (none configured: always issuing)."""
        return self._schedules.get(name, GenerationDates())

    def get(self, name: str) -> IssuerGeneration:
        """A generation by name."""
        try:
            return self.generations[name]
        except KeyError:
            raise NotFound(f"no issuing generation {name!r}") from None

    def for_issuance(self, now: datetime) -> IssuerGeneration:
        """The newest generation that has started issuing and is not retired at `now`."""
        for name in sorted(self.generations, key=lambda n: int(n[1:]), reverse=True):
            schedule = self.schedule(name)
            if schedule.issues_from is not None and now < schedule.issues_from:
                continue
            if schedule.retire_at is not None and now >= schedule.retire_at:
                continue
            generation = self.generations[name]
            if now <= generation.certificate.not_valid_after_utc:
                return generation
        raise Conflict("no issuing generation is active now; check [generations] in config")

    def chain_der(self, name: str) -> list[bytes]:
        """The issuing CA and the root, DER, for PKCS#12 files and API answers."""
        return [
            self.get(name).certificate.public_bytes(serialization.Encoding.DER),
            self.root.public_bytes(serialization.Encoding.DER),
        ]

    def refresh_responder(self, name: str, generation: IssuerGeneration) -> None:
        """Swap in a re-issued OCSP responder certificate and key."""
        self.generations[name] = generation
