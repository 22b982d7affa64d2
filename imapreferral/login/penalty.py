"""
The per-address authentication penalty, like Dovecot's anvil: after a failed
authentication from an address, that address's next attempts wait before
their credentials are checked, twice as long per failure, up to a cap.

Waiting I{before} the check (Dovecot applies its penalty before the passdb
lookup) is what bounds guessing: a client that hangs up during the wait gets
nothing checked, so one address makes at most one guess per connection per
penalty period, however fast it reconnects. Successes and password-checked
referrals clear the record (but not failures counted while they were being
checked); trusted networks are exempt; addresses count as
L{accountingKey} says (IPv6 per /48), as for the connection limits.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

from imapreferral.networks import NetworkList, accountingKey

#: Failures counted per address at most: the wait reaches any sensible cap
#: long before (2 s doubled 32 times is 272 years), and C{base * 2.0**count}
#: stays a float (C{2**count} overflowed one after 1,024 failures).
MAX_COUNT = 32


class AuthPenalty:
    """
    @ivar exempt: Addresses that are never penalised.
    @ivar cap: The longest wait before a check, in seconds.
    @ivar forget: Seconds without failures after which an address is forgiven.
    """

    def __init__(
        self,
        clock: IReactorTime,
        exempt: NetworkList,
        cap: float = 15.0,
        forget: float = 3600.0,
        maxEntries: int = 100_000,
    ) -> None:
        self.clock = clock
        self.exempt = exempt
        self.cap = cap
        self.forget = forget
        self.maxEntries = maxEntries
        self._failures: dict[str, tuple[int, float]] = {}

    def checkDelay(self, host: str | None, base: float) -> float:
        """
        How long an attempt from C{host} waits before its credentials are
        checked: nothing after no (recent) failure, else C{base} doubled once
        per failure (2 s: 4, 8, 15 s with the default cap), at most L{cap}.
        """
        if not self._failures or base <= 0:
            return 0.0  # the common case, without parsing the address
        key = accountingKey(host)
        count, last = self._failures.get(key, (0, 0.0)) if key is not None else (0, 0.0)
        if not count or self.clock.seconds() - last > self.forget:
            return 0.0
        return min(self.cap, base * 2.0**count)

    def failed(self, host: str | None) -> None:
        """Count a failed authentication from C{host} (unless it is exempt)."""
        key = accountingKey(host)
        if key is None or self.exempt.contains(host):
            return
        now = self.clock.seconds()
        count, last = self._failures.get(key, (0, now))
        if now - last > self.forget:
            count = 0
        if len(self._failures) >= self.maxEntries and key not in self._failures:
            self._prune(now)
        self._failures[key] = (min(count + 1, MAX_COUNT), now)

    def succeeded(self, host: str | None, checkStarted: float | None = None) -> None:
        """
        A successful authentication (or referral) clears the address's
        record, unless a failure was counted after its check began at
        C{checkStarted}: one's own password, checked behind a batch of
        guesses in the hashing pool, must not wipe out the guesses.
        """
        if not self._failures:
            return  # the common case, without parsing the address
        key = accountingKey(host)
        if key is None:
            return
        last = self._failures.get(key, (0, 0.0))[1]
        if checkStarted is None or last <= checkStarted:
            self._failures.pop(key, None)

    def penalised(self) -> int:
        """
        How many addresses (IPv6: /48s) have failures not yet forgiven: their
        next attempts wait (unless the failure delay is 0). Counts every
        entry: at most C{maxEntries}, for a metrics scrape, not per login.
        """
        now = self.clock.seconds()
        return sum(1 for _, last in self._failures.values() if now - last <= self.forget)

    def _prune(self, now: float) -> None:
        """Bound memory: drop forgiven entries, or the oldest half if none are."""
        stale = [k for k, (_, last) in self._failures.items() if now - last > self.forget]
        if not stale:
            ordered = sorted(self._failures.items(), key=lambda item: item[1][1])
            stale = [k for k, _ in ordered[: len(ordered) // 2]]
        for key in stale:
            del self._failures[key]
