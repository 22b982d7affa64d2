"""Connection limits across connections: who counts as one address."""

from __future__ import annotations

import pytest

from imapreferral.limits import ConnectionLimiter, RefusalLog
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


def test_firstRefusalOfAnAddressIsLogged(clock):
    assert RefusalLog(clock).refused("192.0.2.7") == 0


def test_refusalsWithinThePeriodAreOnlyCounted(clock):
    log = RefusalLog(clock, period=60)
    log.refused("192.0.2.7")
    assert [log.refused("192.0.2.7") for _ in range(1000)] == [None] * 1000


def test_lineAfterThePeriodSaysHowManyWentUnlogged(clock):
    log = RefusalLog(clock, period=60)
    log.refused("192.0.2.7")
    for _ in range(5):
        log.refused("192.0.2.7")
    clock.advance(60)
    assert log.refused("192.0.2.7") == 5
    assert log.refused("192.0.2.7") is None


def test_addressesAreThrottledApart(clock):
    log = RefusalLog(clock)
    log.refused("192.0.2.7")
    assert log.refused("192.0.2.8") == 0


def test_oneIPv6PrefixIsOneAddressForTheLog(clock):
    log = RefusalLog(clock)
    log.refused("2001:db8:1:1::1")
    assert log.refused("2001:db8:1:2::7") is None


def test_rememberedAddressesAreBounded(clock):
    log = RefusalLog(clock, maxEntries=10)
    for i in range(100):
        log.refused(f"192.0.2.{i}")
    assert len(log._seen) <= 10


def test_limiterWithoutAClockLogsEveryRefusal():
    limiter = ConnectionLimiter(0, 1, NetworkList())
    assert [limiter.refusalToLog("192.0.2.7") for _ in range(3)] == [0, 0, 0]


def test_refusalsAreTalliedByTheLimitReached():
    """What C{imapreferral_limit_hits_total} reads."""
    limiter = ConnectionLimiter(3, 1, NetworkList.fromStrings(["192.0.2.0/24"]))
    assert limiter.admit("198.51.100.1") is None
    assert limiter.admit("198.51.100.1") == REFUSED
    assert limiter.admit("192.0.2.1") is None  # exempt from the per-address limit
    assert limiter.admit("192.0.2.1") is None
    assert limiter.admit("192.0.2.1") == "Maximum number of connections reached."
    assert dict(limiter.hits) == {"max-connections-per-ip": 1, "max-connections": 1}
