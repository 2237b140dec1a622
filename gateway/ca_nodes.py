"""Several CA nodes behind one client (issue 13): which node to ask first, which to skip.

The gateway may be given several CA nodes (`gateway.ca_internal_url` and `ca_public_url` as
lists, README "CA cluster"). Every node is equal (they share one PostgreSQL database), so any
node can answer any call; this module only decides the order in which they are asked:

* The node **in use** (the last one that answered) is asked first, then the others in the
  configured order. The gateway stays on a node while it answers: no flapping between nodes,
  no latency spike from probing a node that may still be dead.
* A node that **failed** (refused the connection, timed out, reset it, answered 502/503/504)
  is skipped for a back-off: 1 s after its first failure, doubling with each further one up to
  30 s. When the back-off is over it is a candidate again, after the node in use. Its failures
  are forgotten at its first answer.
* A failed node whose back-off is over is **probed** once a second (CaClient.watch_nodes, a
  cheap read: the feed's position, the public /health): when it answers it is up again and,
  if it comes before the node in use in the configured order, the gateway goes back to it
  (the operator lists the preferred node first, e.g. the one in the gateway's own rack).
  A probe that fails doubles its back-off, as a failed call does.
* When every node is in back-off, all are still tried (the one whose back-off ends first,
  first): the gateway never gives up on the CA without asking.

Each caller (gateway/ca_client.py) decides per call whether a request that may have reached a
node may be sent to the next one; this class only keeps the state and shows it on /metrics
(`sekisho_gateway_ca_node_up`, `_in_use`, `_failovers_total`; gateway/metrics.py).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from gateway import metrics

_log = structlog.get_logger("gateway.ca_nodes")

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0


@dataclass
class CaNode:
    """One CA node's base URL, its TLS context (internal API) and its failure state."""

    url: str
    ssl: ssl.SSLContext | bool = True
    failures: int = 0
    retry_at: float = 0.0  # monotonic time before which the node is skipped
    last_error: str = ""


class CaNodes:
    """The nodes of one role ("internal" or "public"), in configured order."""

    def __init__(self, role: str, urls: Sequence[str],
                 contexts: Sequence[ssl.SSLContext | bool] | None = None, *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if not urls:
            raise ValueError(f"no CA {role} URL")
        if contexts is not None and len(contexts) != len(urls):
            raise ValueError("one TLS context per CA node")
        self.role = role
        self.nodes = [CaNode(url.rstrip("/"), contexts[i] if contexts is not None else True)
                      for i, url in enumerate(urls)]
        self._monotonic = monotonic
        self._current = self.nodes[0]
        for node in self.nodes:
            self._publish(node)

    @property
    def current(self) -> CaNode:
        """The node asked first: the last one that answered (the first configured at start)."""
        return self._current

    def is_up(self, node: CaNode) -> bool:
        """False while the node is in its back-off after a failure."""
        return node.retry_at <= self._monotonic()

    def candidates(self) -> list[CaNode]:
        """Every node, in the order to try them for one call (see the module docstring)."""
        ordered = [self._current, *(n for n in self.nodes if n is not self._current)]
        ready = [node for node in ordered if self.is_up(node)]
        waiting = sorted((node for node in ordered if not self.is_up(node)),
                         key=lambda node: node.retry_at)
        return ready + waiting

    def succeeded(self, node: CaNode, *, use: bool = True) -> None:
        """`node` answered (any answer below 500, or a 500 that is not about its health);
        with `use`, it becomes the node in use (not for a call only that node could take)."""
        if node.failures:
            _log.info("ca_node_back", role=self.role, node=node.url, failures=node.failures)
        node.failures, node.retry_at, node.last_error = 0, 0.0, ""
        if use and node is not self._current:
            previous, self._current = self._current, node
            _log.warning("ca_node_failover", role=self.role, node=node.url,
                         previous=previous.url, reason=previous.last_error or "back-off")
            metrics.ca_failover(self.role)
            self._publish(previous)
        self._publish(node)

    def due_for_probe(self) -> list[CaNode]:
        """Failed nodes whose back-off is over (to be asked whether they are back)."""
        return [node for node in self.nodes if node.failures and self.is_up(node)]

    def fail_back(self, node: CaNode) -> None:
        """`node` answered a probe: use it again when it is configured before the node in
        use (and has not failed since)."""
        if node.failures == 0 and self.nodes.index(node) < self.nodes.index(self._current):
            previous, self._current = self._current, node
            _log.warning("ca_node_failback", role=self.role, node=node.url,
                         previous=previous.url)
            metrics.ca_failover(self.role)
            self._publish(previous)
            self._publish(node)

    def failed(self, node: CaNode, reason: str) -> None:
        """`node` did not answer usefully: skip it for its back-off."""
        node.failures += 1
        node.last_error = reason
        backoff = min(BACKOFF_FIRST * 2 ** (node.failures - 1), BACKOFF_MAX)
        node.retry_at = self._monotonic() + backoff
        _log.warning("ca_node_failed", role=self.role, node=node.url, reason=reason,
                     failures=node.failures, retry_in_s=backoff)
        self._publish(node)

    def _publish(self, node: CaNode) -> None:
        metrics.ca_node_state(self.role, node.url, up=node.failures == 0,
                              in_use=node is self._current)
