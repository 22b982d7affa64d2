"""
C{SIGTERM}: stop without cutting anyone off mid-sentence.

twistd's own handler stops the reactor, whose C{before shutdown} trigger
waits for the application's C{stopService}. Ours (L{stopInStages}) then:

  1. stops accepting: the listeners (and C{--workers} processes, which
     drain the same way) stop first;
  2. drains (L{Drain}): a connection before login gets
     C{* BYE Server shutting down.} at once, or right after the answer to
     the login it has in flight, and is closed (aborted if it is still
     open a second or two later: a TLS client that never answers TLS's
     close_notify would otherwise keep it); proxied and logged-in sessions go on
     working for up to the grace period (C{--shutdown-grace}), then are
     closed (a relay flushes both sides, see L{imapreferral.proxy.relay});
  3. stops the rest (passdb connection pools, hashing threads), which the
     logins in flight needed until they were answered.

The process then exits with status 0 (L{exitCleanly}), not by the signal:
a shutdown asked for and completed is a success. A second C{SIGTERM} (or
C{SIGINT}) during the grace ends it at once (L{hurryOnSignal}); twistd's
handler would only log a C{ReactorNotRunning} traceback.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable, Sequence
from types import FrameType
from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

_log = Logger()

#: C{--shutdown-grace}: seconds proxied sessions may go on after C{SIGTERM}.
DEFAULT_GRACE = 10.0
#: Seconds after the grace before connections still open (a client that
#: reads nothing, a login still waiting for its passdb) are aborted.
LAST_CALL = 30.0
#: Seconds a connection told goodbye before login may take to be gone
#: before it is aborted (checked this often, so up to twice that).
CLOSE_WITHIN = 1.0

#: What a connection before login is told (Dovecot's words).
SHUTTING_DOWN = b"Server shutting down."


class Drain:
    """
    One shutdown of a L{imapreferral.imap.factory.ReferralServerFactory}'s
    connections; see the module docstring.

    The factory keeps its open connections in C{connections} and calls
    L{connectionEnded} as each one goes; each connection takes
    C{shutDown()} (goodbye before login) and C{graceOver()} (goodbye to
    what is left).
    """

    def __init__(
        self,
        factory: Any,
        clock: IReactorTime,
        grace: float,
        lastCall: float = LAST_CALL,
        closeWithin: float = CLOSE_WITHIN,
    ) -> None:
        """
        @param factory: Whose C{connections} to drain.
        @param clock: For the grace period and the last call.
        @param grace: Seconds proxied and logged-in sessions go on.
        @param lastCall: Seconds after the grace before what is still open
            is aborted.
        @param closeWithin: Seconds a connection told goodbye before login
            has to be gone, checked this often (L{_sweep}).
        """
        self._factory = factory
        self._clock = clock
        self._grace = grace
        self._lastCall = lastCall
        self._closeWithin = closeWithin
        #: Pre-login connections seen closing at the last sweep.
        self._lingering: set[Any] = set()
        self._calls: list[IDelayedCall] = []
        self._graceCall: IDelayedCall | None = None
        #: Whether the grace period has ended.
        self.graceOver = False
        #: Fires once every connection is closed.
        self.done: Deferred[None] = Deferred()

    def start(self) -> Deferred[None]:
        """Say goodbye where it is due, start the grace period; fires once all are closed."""
        connections = list(self._factory.connections)
        relays = len(self._factory.relays)
        _log.info(
            "shutting down: {count} connections open ({relays} proxied), "
            "sessions have {grace:g} s to end",
            count=len(connections),
            relays=relays,
            grace=self._grace,
        )
        self._factory.drain = self
        for connection in connections:
            connection.shutDown()
        if self._grace > 0:
            self._graceCall = self._clock.callLater(self._grace, self._graceOver)
            self._calls.append(self._graceCall)
        else:
            self._graceOver()
        self._sweep()
        self._check()
        return self.done

    def _sweep(self) -> None:
        """
        Abort each connection before login that was already closing (told
        goodbye, its BYE written) at the last sweep, and is still here:
        only its client's close is missing (TLS waits for the client's
        close_notify). Sessions are left to the grace and the last call:
        a relay may still be flushing a slow client.
        """
        if self.done.called:
            return
        closing = {
            connection
            for connection in self._factory.connections
            if getattr(connection, "state", None) == "unauth"
            and getattr(connection.transport, "disconnecting", False)
        }
        late = closing & self._lingering
        for connection in late:
            connection.transport.abortConnection()
        self._lingering = closing - late
        self._calls = [call for call in self._calls if call.active()]
        self._calls.append(self._clock.callLater(self._closeWithin, self._sweep))

    def hurry(self) -> None:
        """End the grace now (the operator asked twice)."""
        if self.graceOver or self.done.called:
            return
        if self._graceCall is not None and self._graceCall.active():
            self._graceCall.cancel()
        _log.info("shutdown: asked again, ending the grace now")
        self._graceOver()

    def _graceOver(self) -> None:
        left = list(self._factory.connections)
        if left:
            _log.info("shutdown grace over: closing {count} connections", count=len(left))
        self.graceOver = True
        for connection in left:
            connection.graceOver()
        self._calls.append(self._clock.callLater(self._lastCall, self._abortAll))
        self._check()

    def _abortAll(self) -> None:
        left = list(self._factory.connections)
        _log.warn(
            "shutdown: aborting {count} connections still open {seconds:g} s after the grace",
            count=len(left),
            seconds=self._lastCall,
        )
        for connection in left:
            connection.transport.abortConnection()

    def connectionEnded(self) -> None:
        """The factory lost a connection: done once none is left."""
        self._check()

    def _check(self) -> None:
        if self._factory.connections or self.done.called:
            return
        for call in self._calls:
            if call.active():
                call.cancel()
        _log.info("shutdown: all connections closed")
        self.done.callback(None)


def stopInStages(
    service: MultiService,
    first: Callable[[IService], bool],
    alongside: Callable[[IService], bool],
    drain: Callable[[], Deferred[None]],
) -> Deferred[None]:
    """
    C{MultiService.stopService} in three steps: the children C{first}
    picks; then C{drain()} and, at the same time, the children C{alongside}
    picks (worker processes, which drain their own connections); then the
    other children. Each step in reverse order of starting, as
    C{MultiService} does.
    """
    Service.stopService(service)
    children = list(service)[::-1]
    front = [child for child in children if first(child)]
    along = [child for child in children if alongside(child) and not first(child)]
    rest = [child for child in children if child not in front and child not in along]
    d = _stopAll(front)
    d.addCallback(lambda _: DeferredList([drain(), _stopAll(along)]))
    d.addCallback(lambda _: _stopAll(rest))
    return d.addCallback(lambda _: None)


def _stopAll(services: Iterable[IService]) -> Deferred[Any]:
    return DeferredList([maybeDeferred(s.stopService) for s in services])


def hurryOnSignal(
    reactor: Any,
    drain: Drain,
    also: Sequence[Callable[[], None]] = (),
    until: Deferred[Any] | None = None,
) -> None:
    """
    Until C{until} fires (by default: C{drain} is done), C{SIGTERM} and
    C{SIGINT} end C{drain}'s grace at once (in the signal handler, only
    scheduled) and call each of C{also} (the C{--workers} processes, told
    to hurry too: they may still be draining when this process's
    connections are all gone); then the handlers before are back.
    """

    def hurry() -> None:
        drain.hurry()
        for call in also:
            call()

    def received(signum: int, frame: FrameType | None) -> None:
        reactor.callFromThread(hurry)

    previous = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[signum] = signal.signal(signum, received)
        except ValueError:  # not the main thread: embedded, no signals of ours
            break

    def restore(result: object) -> object:
        for signum, handler in previous.items():
            if signal.getsignal(signum) is received:
                signal.signal(signum, handler)
        return result

    (drain.done if until is None else until).addBoth(restore)


def exitCleanly(reactor: Any) -> None:
    """
    Let twistd exit with status 0 after a graceful stop on C{SIGTERM} or
    C{SIGINT}: by default it re-raises the signal on itself once the reactor
    has stopped (C{twisted.application.app._exitWithSignal}), which the
    reactor remembers in C{_exitSignal}.
    """
    if getattr(reactor, "_exitSignal", None) is not None:
        reactor._exitSignal = None
