"""Two real CA nodes (`python -m ca serve`) on one PostgreSQL database and the same key
files, for the cluster tests and bench/ca_cluster.py (issue 13), and an OCSP query of one
node's public listener. `cluster_node` makes a node a `CaProcess` (tests/support/faults.py)
for the tests that kill -9 it and start it again."""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import asyncpg
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from ca.config import load_ca_config
from common.postgres import current_leader
from common.tlsfiles import tls_client_context
from tests.support.faults import CaProcess
from tests.support.processes import REPO, Daemons, demo_config, launched
from tests.support.servers import free_port


def cluster_configs(directory: Path, dsn: str, *, extra: str = "") -> tuple[Path, Path]:
    """config.toml (node1) and config-node2.toml in `directory`: the same DSN, data folder
    and keys; their own listen ports and node names. `extra` goes into [ca] of both."""
    config = demo_config(directory)
    text = config.read_text().replace(
        'database = "var/ca/ca.sqlite3"', f'database = "{dsn}"\nnode_name = "node1"\n{extra}')
    config.write_text(text)
    for key in ("public_listen", "internal_listen"):
        old = re.search(rf'^{key} = "127\.0\.0\.1:(\d+)"', text, re.MULTILINE)
        assert old is not None
        new = str(free_port())
        text = text.replace(f'{key} = "127.0.0.1:{old.group(1)}"', f'{key} = "127.0.0.1:{new}"')
        if key == "public_listen":
            text = text.replace(f'public_url = "http://127.0.0.1:{old.group(1)}"',
                                f'public_url = "http://127.0.0.1:{new}"')
    second = directory / "config-node2.toml"
    second.write_text(text.replace('node_name = "node1"', 'node_name = "node2"'))
    subprocess.run([sys.executable, "-m", "ca", "--config", str(config), "init",
                    "--generate-passphrase"], cwd=REPO, check=True, capture_output=True)
    return config, second


@contextlib.contextmanager
def two_nodes(first: Path, second: Path) -> Iterator[tuple[Daemons, Daemons]]:
    """Both nodes running, their internal APIs answering; killed afterwards."""
    with launched(first, "ca", "--config", str(first), "serve") as node1, \
            launched(second, "ca", "--config", str(second), "serve") as node2:
        node1.wait_internal_api()
        node2.wait_internal_api()
        yield node1, node2


def cluster_node(config_path: Path, dsn: str) -> CaProcess:
    """One node of `cluster_configs` as a `CaProcess` (not started): named after its
    node_name, reading the cluster's database, its internal API over TLS pinned to the
    certificate the first node's `serve` writes into the shared data folder."""
    config = load_ca_config(config_path)
    return CaProcess(
        config_path=config_path, public_url=f"http://127.0.0.1:{config.public_listen.port}",
        internal_url=f"https://127.0.0.1:{config.internal_listen.port}",
        database=config.database, token=config.api_token_file.read_text().strip(),
        directory=config_path.parent, name=config.node_name, dsn=dsn)


def pin_internal_tls(node: CaProcess) -> ssl.SSLContext:
    """The client context of `node`'s internal listener (once its certificate exists)."""
    node.internal_tls = tls_client_context(load_ca_config(node.config_path).internal_tls_cert)
    return node.internal_tls


def public_url(node: Daemons) -> str:
    """The node's public listener (OCSP, CRL)."""
    host, port = node.address("public_listen")
    return f"http://{host}:{port}"


def ocsp_status(node: Daemons, serial: str, issuer: x509.Certificate) -> str:
    """"good", "revoked" or "unknown": the node's OCSP answer for `serial` (hex) of
    `issuer`, asked over HTTP as a relying party would (RFC 6960 POST, SHA-1 CertID)."""
    # RFC 6960 4.1.1: issuerNameHash over the issuer's DER name, issuerKeyHash over its
    # subjectPublicKey BIT STRING contents (for EC keys, the uncompressed point).
    point = issuer.public_key().public_bytes(serialization.Encoding.X962,
                                             serialization.PublicFormat.UncompressedPoint)
    request = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        _sha1(issuer.subject.public_bytes()), _sha1(point), int(serial, 16),
        hashes.SHA1()).build()  # noqa: S303 - the CertID hash of RFC 6960, not a signature
    http = urllib.request.Request(  # noqa: S310 - an http:// URL on loopback
        public_url(node) + "/ocsp", data=request.public_bytes(serialization.Encoding.DER),
        headers={"Content-Type": "application/ocsp-request"}, method="POST")
    with urllib.request.urlopen(http, timeout=10) as response:  # noqa: S310 - loopback
        answer = ocsp.load_der_ocsp_response(response.read())
    return answer.certificate_status.name.lower()


def _sha1(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SHA1())  # noqa: S303 - the CertID hash of RFC 6960
    digest.update(data)
    return digest.finalize()


def crl_leader(dsn: str) -> str | None:
    """The node name of the CRL leader (its lock session's name), or None while none leads."""

    async def ask() -> str | None:
        conn = await asyncpg.connect(dsn)
        try:
            holder = await current_leader(conn, "crl")
        finally:
            await conn.close()
        return None if holder is None else holder[1].rsplit(":", 1)[-1]

    return asyncio.run(ask())
