"""
Bounds on the unauthenticated surface that span connections: how many
connections in all and per client address (Twisted's
C{LimitConnectionsByPeer} fails on current Twisted: C{addr[0]} on an
C{IPv4Address}). Clients are counted by L{accountingKey}: IPv6 per /48.
"""

from __future__ import annotations

from collections import Counter

from imapreferral.networks import NetworkList, accountingKey


def _keyOf(host: str | None) -> str:
    """L{accountingKey}; what is not an address counts as itself (all UNIX clients as one)."""
    return accountingKey(host) or host or "?"


class ConnectionLimiter:
    """
    Counts open connections. Clients in C{exempt} (trusted networks) are
    counted in the total but never refused for their address.

    @ivar maxTotal: Most connections at once; 0 means no limit.
    @ivar maxPerAddress: Most connections from one address (IPv6: one /48);
        0 means no limit.
    """

    def __init__(self, maxTotal: int, maxPerAddress: int, exempt: NetworkList) -> None:
        self.maxTotal = maxTotal
        self.maxPerAddress = maxPerAddress
        self.exempt = exempt
        self.total = 0
        self._perAddress: Counter[str] = Counter()

    def admit(self, host: str | None) -> str | None:
        """
        Count a new connection from C{host}, or refuse it.

        @return: L{None} if admitted (call L{release} when it ends), else
            the reason to give the client.
        """
        if self.maxTotal and self.total >= self.maxTotal:
            return "Maximum number of connections reached."
        key = _keyOf(host)
        if (
            self.maxPerAddress
            and self._perAddress[key] >= self.maxPerAddress
            and not self.exempt.contains(host)
        ):
            return "Maximum number of connections from your address reached."
        self.total += 1
        self._perAddress[key] += 1
        return None

    def release(self, host: str | None) -> None:
        """A connection admitted from C{host} has ended."""
        key = _keyOf(host)
        self.total -= 1
        self._perAddress[key] -= 1
        if self._perAddress[key] <= 0:
            del self._perAddress[key]
