"""The gateway's Prometheus metrics, per worker, aggregated on GET /metrics (README "Processes").

With `gateway.workers = N > 1` every worker is its own process: the supervisor
(gateway/supervisor.py) gives them a private 0700 folder in `PROMETHEUS_MULTIPROC_DIR`, emptied
at its start, and prometheus_client's multiprocess mode keeps each worker's values in its own
memory-mapped file there. Whichever worker the balancer hands the scrape to reads every file,
so one GET /metrics shows the whole host; the `worker` label (1..N, kept across restarts of a
slot) tells the workers apart. We chose this over the parent scraping its workers: no extra
listener or HTTP round trip per worker, and a counter of a worker that died is not lost (its
file stays; Prometheus counters only grow).

With one process the same metrics live in an ordinary registry.

The environment variable must be set before prometheus_client is imported (it picks its value
class at import): the supervisor sets it in each worker's environment at spawn.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

# The slot of this process (the supervisor sets it; "1" when the gateway runs alone).
WORKER_ENV = "SEKISHO_GATEWAY_WORKER"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_registry = CollectorRegistry()
_REQUESTS = Counter("sekisho_gateway_requests", "Requests answered on the TLS listener",
                    ["worker", "status"], registry=_registry)
_STARTS = Counter("sekisho_gateway_worker_starts",
                  "Starts of each worker slot (restarts = starts - 1)", ["worker"],
                  registry=_registry)

# Several CA nodes (issue 13, gateway/ca_nodes.py): per worker, role ("internal" API or
# "public" OCSP/CRL/bundle) and node URL. A gauge keeps each worker's last value.
_CA_NODE_UP = Gauge("sekisho_gateway_ca_node_up",
                    "1 while the CA node's last call succeeded, 0 after a failed one until it "
                    "answers again", ["worker", "role", "node"], registry=_registry,
                    multiprocess_mode="mostrecent")
_CA_NODE_IN_USE = Gauge("sekisho_gateway_ca_node_in_use",
                        "1 for the CA node this worker asks first (the last that answered)",
                        ["worker", "role", "node"], registry=_registry,
                        multiprocess_mode="mostrecent")
_CA_FAILOVERS = Counter("sekisho_gateway_ca_failovers",
                        "Moves of a worker from one CA node to another", ["worker", "role"],
                        registry=_registry)


def worker_id() -> str:
    """This process's worker slot, "1" when the gateway runs as one process."""
    return os.environ.get(WORKER_ENV, "1")


class RequestCounter:
    """Counts answers by status class; the label children are bound once (hot path)."""

    def __init__(self) -> None:
        worker = worker_id()
        self._children = {digit: _REQUESTS.labels(worker=worker, status=f"{digit}xx")
                          for digit in range(1, 6)}

    def count(self, status: int) -> None:
        """One answer with HTTP `status`."""
        child = self._children.get(status // 100)
        if child is not None:
            child.inc()


def worker_started() -> None:
    """Record a start of this worker slot."""
    _STARTS.labels(worker=worker_id()).inc()


def exposition() -> bytes:
    """The Prometheus text of the whole host: every worker's files, or this process alone."""
    folder = os.environ.get(MULTIPROC_ENV)
    if not folder:
        return generate_latest(_registry)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=folder)
    return generate_latest(registry)


def ca_node_state(role: str, node: str, *, up: bool, in_use: bool) -> None:
    """Show whether a CA node answers and whether it is the one in use (gateway/ca_nodes.py)."""
    worker = worker_id()
    _CA_NODE_UP.labels(worker=worker, role=role, node=node).set(1 if up else 0)
    _CA_NODE_IN_USE.labels(worker=worker, role=role, node=node).set(1 if in_use else 0)


def ca_failover(role: str) -> None:
    """Count one move to another CA node."""
    _CA_FAILOVERS.labels(worker=worker_id(), role=role).inc()
