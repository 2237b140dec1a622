"""The listener limits' configuration and descriptor budget (issue 10 item 5); the limits
themselves are driven against the real daemons in tests/test_listener_limits.py."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from common.config import ConfigError, Section
from common.listener import ConnectionLimits

REPO = Path(__file__).resolve().parents[2]


class TestConnectionLimits:
    """Defaults, overrides and refusals of the [ca]/[gateway] limit keys."""

    def test_defaults(self) -> None:
        """Without keys, the documented defaults apply."""
        assert ConnectionLimits.from_section(Section("gateway", {}, REPO)) == ConnectionLimits(
            header_timeout=10, body_timeout=30, keepalive_timeout=60, tls_handshake_timeout=10,
            send_timeout=60, max_connections=1000)

    @pytest.mark.parametrize(("key", "value"), [("header_timeout", "0s"),
                                                ("body_timeout", "0s"),
                                                ("max_connections", 0),
                                                ("keepalive_timeout", "soon")])
    def test_refuses_zero_and_nonsense(self, key: str, value: object) -> None:
        """A zero limit or an unreadable duration stops start-up naming the key."""
        with pytest.raises(ConfigError, match=key):
            ConnectionLimits.from_section(Section("ca", {key: value}, REPO))


def test_descriptor_limit_is_raised_to_fit_the_caps() -> None:
    """A soft RLIMIT_NOFILE below the caps is raised (up to the hard limit) at start."""
    script = textwrap.dedent("""
        import resource
        from common.listener import ensure_descriptors
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, 4096))
        ensure_descriptors(2000)
        print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                            text=True, timeout=60, check=True)
    assert int(result.stdout) == 2000 + 256
