"""
C{SIGHUP}: re-read what can change under a running server (TLS certificate
and key, passwd-files, SQL configs, caches) without dropping a connection,
as C{doveadm reload} does for Dovecot.

One registry, L{Reloader}: whatever can be re-read provides L{IReloadable}
and is registered once at start-up; the signal re-reads them all. Each one
owns its rule for a broken new file: keep what it has and log one line
saying why. The signal handler only schedules the work on the reactor
(signal handlers run between any two bytecodes, in the middle of whatever
the reactor was doing); it chains to a handler installed before ours and
is taken out again when the service stops.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface

_log = Logger()


class IReloadable(Interface):
    """Something a running server re-reads on C{SIGHUP}."""

    def reload():  # type: ignore[no-untyped-def]
        """
        Re-read the configuration. On a problem keep the current one and log
        one line naming the file and what is wrong (no traceback): the
        operator's next step is to fix the file and signal again. Work in
        flight (an open connection, a running lookup) finishes with what it
        started with.

        @return: L{None}, or a Deferred firing when the new configuration
            is in use (or refused).
        """


class Reloader(Service):
    """
    The reloadables, and the C{SIGHUP} handler that re-reads them.

    @ivar reloadables: In the order registered, which is the order re-read.
    """

    name = "reloader"

    def __init__(self, reactor: Any, signum: int = signal.SIGHUP) -> None:
        """
        @param reactor: Where the signal handler schedules the reload
            (C{callFromThread} is safe to call from a signal handler).
        @param signum: The signal; C{SIGHUP} but in tests.
        """
        self._reactor = reactor
        self._signum = signum
        self._previous: Any = None
        self.reloadables: list[Any] = []
        self._afterwards: list[Any] = []

    def register(self, reloadable: Any, afterwards: bool = False) -> None:
        """
        Re-read C{reloadable} (an L{IReloadable}) on every signal from now on.

        @param afterwards: Once the others are done (a cache of what they
            hold: emptied before they are, logins meanwhile would fill it
            again with the old answers, for its whole TTL).
        """
        if not IReloadable.providedBy(reloadable):
            raise TypeError(f"{reloadable!r} does not provide IReloadable")
        (self._afterwards if afterwards else self.reloadables).append(reloadable)

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(self._signum, self._received)

    def stopService(self) -> None:
        super().stopService()
        if signal.getsignal(self._signum) == self._received:
            signal.signal(self._signum, self._previous)
        self._previous = None

    def _received(self, signum: int, frame: FrameType | None) -> None:
        """The signal handler: no I/O here, only scheduling; then the previous handler."""
        self._reactor.callFromThread(self.reload)
        previous = self._previous
        if callable(previous):
            previous(signum, frame)

    def reload(self) -> Deferred[None]:
        """
        Re-read every reloadable, each on its own (one that fails unexpectedly
        does not stop the others), then those registered C{afterwards}; fires
        when all are done, after a closing log line.
        """
        name = signal.Signals(self._signum).name
        _log.info(
            "{signal}: re-reading {count} configuration sources",
            signal=name,
            count=len(self.reloadables) + len(self._afterwards),
        )

        def done(_: object) -> None:
            _log.info("{signal}: reload done", signal=name)

        d = self._reloadAll(self.reloadables)
        d.addCallback(lambda _: self._reloadAll(self._afterwards))
        return d.addCallback(done)

    def _reloadAll(self, reloadables: list[Any]) -> Deferred[Any]:
        runs = []
        for reloadable in reloadables:
            d = maybeDeferred(reloadable.reload)
            d.addErrback(self._unexpected, reloadable)
            runs.append(d)
        return DeferredList(runs)

    @staticmethod
    def _unexpected(failure: Failure, reloadable: Any) -> None:
        """A bug, not a bad file (those are one line, from the reloadable itself)."""
        _log.failure("reloading {reloadable!r} failed", failure, reloadable=reloadable)
