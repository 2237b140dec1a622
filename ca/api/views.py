"""JSON renderings shared by the API modules."""

from __future__ import annotations

from typing import Any

from ca.store import CertRecord


def certificate_view(record: CertRecord, state: str) -> dict[str, Any]:
    """A certificate as the internal API shows it."""
    return {
        "serial": record.serial,
        "user_id": record.user_id,
        "generation": record.generation,
        "kind": record.kind,
        "state": state,
        "not_before": record.not_before.isoformat(),
        "not_after": record.not_after.isoformat(),
        "fingerprint_sha256": record.fingerprint_sha256,
        "revoked_at": record.revoked_at.isoformat() if record.revoked_at else None,
        "revocation_reason": record.revocation_reason,
    }


def revocation_view(record: CertRecord) -> dict[str, Any]:
    """One entry of the revocation feed."""
    return {
        "seq": record.revocation_seq,
        "serial": record.serial,
        "user_id": record.user_id,
        "fingerprint_sha256": record.fingerprint_sha256,
        "revoked_at": record.revoked_at.isoformat() if record.revoked_at else None,
        "reason": record.revocation_reason,
    }
