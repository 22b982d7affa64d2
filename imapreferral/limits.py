"""
Bounds on the unauthenticated surface that span connections: how many
connections in all and per client address (Twisted's
C{LimitConnectionsByPeer} fails on current Twisted: C{addr[0]} on an
C{IPv4Address}). Clients are counted by L{accountingKey}: IPv6 per /48.
"""

from __future__ import annotations

from collections import Counter

from twisted.internet.interfaces import IReactorTime

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
    @ivar hits: How often each limit was reached, by the option that sets
        it (C{max-connections}, C{max-connections-per-ip}, and those the
        pre-login guard counts with L{hit}), for metrics.
    """

    def __init__(
        self,
        maxTotal: int,
        maxPerAddress: int,
        exempt: NetworkList,
        clock: IReactorTime | None = None,
    ) -> None:
        """
        @param clock: With it, refusals are logged through a L{RefusalLog}
            (one line per address a minute); without, every one is.
        """
        self.maxTotal = maxTotal
        self.maxPerAddress = maxPerAddress
        self.exempt = exempt
        self.total = 0
        self._perAddress: Counter[str] = Counter()
        self.hits: Counter[str] = Counter()
        self.refusals = RefusalLog(clock) if clock is not None else None

    def refusalToLog(self, host: str | None) -> int | None:
        """See L{RefusalLog.refused}; every refusal is logged without a clock."""
        return 0 if self.refusals is None else self.refusals.refused(host)

    def admit(self, host: str | None) -> str | None:
        """
        Count a new connection from C{host}, or refuse it.

        @return: L{None} if admitted (call L{release} when it ends), else
            the reason to give the client.
        """
        if self.maxTotal and self.total >= self.maxTotal:
            self.hits["max-connections"] += 1
            return "Maximum number of connections reached."
        key = _keyOf(host)
        if (
            self.maxPerAddress
            and self._perAddress[key] >= self.maxPerAddress
            and not self.exempt.contains(host)
        ):
            self.hits["max-connections-per-ip"] += 1
            return "Maximum number of connections from your address reached."
        self.total += 1
        self._perAddress[key] += 1
        return None

    def hit(self, limit: str) -> None:
        """A connection reached C{limit} (named after its option) and is closed."""
        self.hits[limit] += 1

    def release(self, host: str | None) -> None:
        """A connection admitted from C{host} has ended."""
        key = _keyOf(host)
        self.total -= 1
        self._perAddress[key] -= 1
        if self._perAddress[key] <= 0:
            del self._perAddress[key]


class RefusalLog:
    """
    Keeps refused connections from flooding the log: the first refusal of
    an address (counted by L{accountingKey}) is logged, further ones within
    C{period} seconds are only counted, and the next line after the period
    says how many there were. A client hammering a full server costs one
    line a minute, not one per connection.

    @ivar clock: Time source (injected in tests).
    @ivar period: Seconds between lines for one address.
    @ivar maxEntries: Addresses remembered at most; beyond, the table starts
        afresh (so the memory stays bounded and at worst a line repeats).
    """

    def __init__(
        self, clock: IReactorTime, period: float = 60.0, maxEntries: int = 10_000
    ) -> None:
        self.clock = clock
        self.period = period
        self.maxEntries = maxEntries
        self._seen: dict[str, tuple[float, int]] = {}

    def refused(self, host: str | None) -> int | None:
        """
        Count a refusal from C{host}.

        @return: L{None} when it should not be logged, else how many refusals
            from this address went unlogged before it (0 for the first).
        """
        key = _keyOf(host)
        now = self.clock.seconds()
        entry = self._seen.get(key)
        if entry is not None and now - entry[0] < self.period:
            self._seen[key] = (entry[0], entry[1] + 1)
            return None
        if len(self._seen) >= self.maxEntries:
            self._seen.clear()
        self._seen[key] = (now, 0)
        return 0 if entry is None else entry[1]
