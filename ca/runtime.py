"""Everything a running CA holds: opened once by the daemon, the CLI and the tests alike."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from ca.config import CaConfig
from ca.crl_publisher import CrlPublisher
from ca.cutover_job import CutoverRecorder
from ca.feed import RevocationFeed
from ca.issuance import CertificateAuthority
from ca.issuers import Issuers
from ca.leadership import CRL_JOB, CUTOVER_JOB, RESPONDER_JOB, LeaderJob
from ca.metrics import CaMetrics
from ca.ocsp_service import OcspService
from ca.pkcs12 import KeyWorkers
from ca.storage import CaStore, daemon_instance, open_store
from ca.store import CertRecord, Owner
from ca.store_pg import RESPONDER_CHANNEL, REVOCATION_CHANNEL, PgStore
from common.passwords import PasswordHasher
from common.postgres import ChannelListener
from keys.custody import Pkcs11Settings, close_keystore, open_keystore
from keys.file_signer import ensure_owner_only, write_owner_only
from keys.hierarchy import Hierarchy
from policy.clock import Clock


def open_hierarchy(config: CaConfig) -> Hierarchy:
    """The key hierarchy: keys in encrypted files (passphrase from the environment or the 0600
    file) or in a PKCS#11 token (PIN likewise), as `keys.backend` says (R-KEY-1)."""
    keys = config.keys
    settings = None
    if keys.backend == "pkcs11":
        settings = Pkcs11Settings(
            module=keys.pkcs11_module, token_label=keys.token_label, pin_file=keys.pin_file,
            pin_env=keys.pin_env, sessions=keys.pkcs11_sessions,
            label_prefix=keys.key_label_prefix, ocsp_keys_in_token=keys.ocsp_keys == "token",
        )
    keystore = open_keystore(keys.backend, keys.directory, keys.passphrase_file,
                             keys.passphrase_env, settings)
    return Hierarchy(keystore, keys.directory, config.organization)


def create_api_token(path: Path) -> str:
    """Create the internal API token file (0600); refuses to overwrite."""
    token = secrets.token_urlsafe(32)
    write_owner_only(path, token.encode())
    return token


def read_api_token(path: Path) -> str:
    """Read the internal API token, refusing a file others can read."""
    ensure_owner_only(path)
    token = path.read_text().strip()
    if len(token) < 32:
        raise ValueError(f"the API token in {path} is too short")
    return token


def _leading(leader: LeaderJob) -> float:
    """The `sekisho_ca_leader{job,node}` gauge: 1 while this node leads the job."""
    return 1.0 if leader.is_leader else 0.0


@dataclass
class CaRuntime:
    """The opened store, issuers, workers and service of one CA."""

    config: CaConfig
    clock: Clock
    store: CaStore
    issuers: Issuers
    workers: KeyWorkers
    hasher: PasswordHasher
    authority: CertificateAuthority
    feed: RevocationFeed
    hierarchy: Hierarchy
    crls: CrlPublisher
    metrics: CaMetrics
    ocsp: OcspService
    revocation_listener: ChannelListener | None = None
    leaders: dict[str, LeaderJob] = field(default_factory=dict)
    responder_listener: ChannelListener | None = None
    cutovers: CutoverRecorder | None = None

    @classmethod
    async def open(
        cls, config: CaConfig, clock: Clock, *, workers: int = 2, publishing: bool = True
    ) -> CaRuntime:
        """Open keys (checking modes), the store and the service.

        `publishing` is for the daemon: it re-signs CRLs and refreshes OCSP after revocations.
        A CLI command leaves that to the daemon, which notices the CLI's commits. The daemon's
        reservations belong to instance "ca-daemon" (one daemon per store; "ca-daemon@<node>"
        on PostgreSQL, see `ca.storage.daemon_instance`), so a restarted
        daemon settles those of the run that died at once (R-FAULT-2/3); a CLI's wait for
        their deadline.
        """
        hierarchy = open_hierarchy(config)
        issuers = Issuers(hierarchy, config.generations)
        store = await open_store(config, daemon=publishing)
        key_workers = KeyWorkers(workers)
        hasher = PasswordHasher()
        authority = CertificateAuthority(
            config=config, clock=clock, store=store, issuers=issuers, workers=key_workers,
            hasher=hasher, cutovers=config.cutovers,
            owner=Owner(daemon_instance(config, publishing), secrets.token_hex(8)),
        )
        feed = RevocationFeed(store)
        await feed.start()
        authority.revocation_listeners.append(feed.catch_up)
        metrics = CaMetrics()
        crls = CrlPublisher(config, clock, store, issuers)
        ocsp = OcspService(config, clock, store, issuers, metrics, hierarchy)
        leaders: dict[str, LeaderJob] = {}
        cutovers = None
        if publishing and isinstance(store, PgStore):
            # The leader jobs of a cluster (issue 13, ca.leadership): one election each,
            # every write fenced by the job's term. CRL first: on the first node it signs
            # the first CRLs as soon as it is elected.
            cutovers_holder: list[CutoverRecorder] = []
            leaders[CRL_JOB] = LeaderJob(store, CRL_JOB, config.node_name, clock,
                                         on_elected=crls.leadership_changed)
            leaders[RESPONDER_JOB] = LeaderJob(store, RESPONDER_JOB, config.node_name, clock,
                                               on_elected=ocsp.leadership_changed)
            leaders[CUTOVER_JOB] = LeaderJob(
                store, CUTOVER_JOB, config.node_name, clock,
                on_elected=lambda: cutovers_holder[0].leadership_changed())
            cutovers = CutoverRecorder(config, clock, store, leaders[CUTOVER_JOB])
            cutovers_holder.append(cutovers)
            crls.leader = leaders[CRL_JOB]
            ocsp.responder_leader = leaders[RESPONDER_JOB]
            for job, leader in leaders.items():
                metrics.leader.labels(job=job, node=config.node_name).set_function(
                    functools.partial(_leading, leader))
                await leader.start()
            with contextlib.suppress(TimeoutError):  # the first node: sign the first CRLs
                await asyncio.wait_for(leaders[CRL_JOB].leading.wait(), 1.0)
        crls.on_publish.append(metrics.crl_published)
        if publishing:
            # OCSP first: it must say "revoked" before anything slower happens.
            feed.listeners.append(ocsp.on_revoked)
            feed.listeners.append(crls.on_revoked)
            authority.issuance_listeners.append(ocsp.on_issued)
            await ocsp.start()

        async def count_revoked(records: list[CertRecord]) -> None:
            metrics.revoked.inc(len(records))

        async def count_issued(_record: CertRecord) -> None:
            metrics.issued.inc()

        feed.listeners.append(count_revoked)
        authority.issuance_listeners.append(count_issued)
        listener = None
        if publishing and isinstance(store, PgStore) and config.revocation_listen:
            # Another node's revocation reaches this node's OCSP at its commit (NOTIFY),
            # not at the next poll; after each (re)connection the feed catches up, since
            # notifications sent while nobody listened are lost (common.postgres).
            listener = ChannelListener(store.settings, REVOCATION_CHANNEL,
                                       lambda _payload: feed.catch_up(),
                                       on_listening=feed.catch_up)
            await listener.start()
        responders = None
        if publishing and isinstance(store, PgStore):
            # A responder the leader renewed is installed by every node at the commit; after
            # each (re)connection, what was published meanwhile (install_published).
            async def install(_payload: str = "") -> None:
                await ocsp.install_published()

            await install()
            responders = ChannelListener(store.settings, RESPONDER_CHANNEL, install,
                                         on_listening=install)
            await responders.start()
        return cls(config, clock, store, issuers, key_workers, hasher, authority, feed,
                   hierarchy, crls, metrics, ocsp, listener, leaders, responders, cutovers)

    async def close(self) -> None:
        """Release the store, the worker processes and the token's sessions."""
        if self.revocation_listener is not None:
            await self.revocation_listener.close()
        if self.responder_listener is not None:
            await self.responder_listener.close()
        for leader in self.leaders.values():
            await leader.close()
        self.workers.close()
        await self.store.close()
        close_keystore(self.hierarchy.keystore)
