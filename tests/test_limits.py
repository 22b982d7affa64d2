"""Connection limits across connections: who counts as one address."""

from __future__ import annotations

import pytest

from imapreferral.limits import ConnectionLimiter
from imapreferral.networks import NetworkList

REFUSED = "Maximum number of connections from your address reached."


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("2001:db8:1:2::5", "2001:db8:1:3::7"),  # one /48
        ("::ffff:127.0.0.2", "127.0.0.2"),  # IPv4-mapped and plain IPv4
        ("fe80::1%eth0", "fe80::2%eth1"),  # zone ids do not make new clients
    ],
    ids=["same-48", "mapped-ipv4", "zone-id"],
)
def test_perAddressLimitSharedByOneClient(first, second):
    limiter = ConnectionLimiter(0, 1, NetworkList())
    assert limiter.admit(first) is None
    assert limiter.admit(second) == REFUSED
    limiter.release(first)
    assert limiter.admit(second) is None


def test_perAddressLimitSeparatesPrefixes():
    limiter = ConnectionLimiter(0, 1, NetworkList())
    assert limiter.admit("2001:db8:1::1") is None
    assert limiter.admit("2001:db8:2::1") is None


def test_releaseForgetsTheAddress():
    limiter = ConnectionLimiter(0, 2, NetworkList())
    limiter.admit("::ffff:192.0.2.1")
    limiter.release("192.0.2.1")
    assert limiter.total == 0 and not limiter._perAddress
