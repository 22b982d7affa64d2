"""
A byte splice between two connected transports, protocol-agnostic: after a
proxied login the front only copies bytes, both ways, parsing nothing.

As C{twisted.protocols.portforward} does, each transport is the other's
consumer through a streaming producer, so a side that stops reading stops
us reading the other (the kernel's buffers and Twisted's 64 KiB write
buffer per direction are all that is ever held). Unlike portforward, the
producers are ours, so closing is ours too, and avoids two Twisted traps
(see C{../shared/reference/dovecot-proxy.md} §5.2-5.3):
  - A transport whose registered producer is paused never finishes
    C{loseConnection()} once its peer goes quiet; and a TLS transport sends
    no close_notify while a producer is registered. So the producers are
    unregistered from both transports I{before} the survivor is closed.
  - A survivor that does not drain (its peer reads nothing) is aborted
    after C{drainTimeout}, so no connection is ever left half-open.

Either side ending ends both, as in Dovecot and nginx (no half-close).

The relay owns no protocol: whoever owns each connection (the IMAP server
that logged the client in, the backend dialogue's protocol) forwards its
C{dataReceived} and C{connectionLost} to L{Relay.client} / L{Relay.backend}.
That avoids swapping C{transport.protocol}, which TLS and PROXY-protocol
wrappers would hide.

When both connections are plain TCP (no TLS), the bytes do not go through
Python at all: L{imapreferral.proxy.splice} moves them with C{splice(2)}
until either side ends, then hands the transports back for the same close
as here. Its back-pressure is the kernel's: a direction holds at most one
pipe beyond the socket buffers.
"""

from __future__ import annotations

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime, ITransport
from twisted.python.failure import Failure
from zope.interface import implementer

from imapreferral.proxy import splice as _splice

#: Seconds a closing side may take to flush what it still holds.
DRAIN_TIMEOUT = 5.0


@attrs.frozen
class RelayStats:
    """
    How a relayed session went, for its closing log line.

    @ivar toBackend: Bytes copied from the client to the backend.
    @ivar toClient: Bytes copied from the backend to the client.
    @ivar endedBy: C{client} or C{backend}: which side closed first;
        C{front} when L{Relay.close} ended it.
    """

    toBackend: int
    toClient: int
    endedBy: str


@implementer(IPushProducer)
class _PeerProducer:
    """
    Registered on one side's transport: when that transport's write buffer
    fills, stop reading the other side; when it drains, read again.
    """

    __slots__ = ("_source",)

    def __init__(self, source: RelayEnd) -> None:
        self._source = source

    def pauseProducing(self) -> None:
        self._source.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if not self._source.relay.closing:
            self._source.transport.resumeProducing()

    def stopProducing(self) -> None:
        """The consumer's connection is gone: end the session."""
        self._source.peer.connectionLost()


class RelayEnd:
    """
    One side of a L{Relay}: its owner forwards the connection's events here.

    @ivar transport: The side's transport.
    @ivar received: Bytes read from this side so far.
    """

    # Thousands of idle sessions each hold two: no per-instance __dict__.
    __slots__ = ("lost", "name", "peer", "received", "relay", "transport")

    def __init__(self, relay: Relay, name: str, transport: ITransport) -> None:
        self.relay = relay
        self.name = name
        self.transport = transport
        self.peer: RelayEnd
        self.received = 0
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        """Bytes from this side: to the other, unless the session is ending."""
        if self.relay.closing:
            return
        self.received += len(data)
        self.peer.transport.write(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        """This side is gone (or its consumer stopped): close the other."""
        if not self.lost:
            self.relay._sideLost(self)


class Relay:
    """
    Two connected transports spliced together; see the module docstring.

    @ivar client: The client's end; its owner forwards events here.
    @ivar backend: The backend's end, likewise.
    @ivar closing: Whether the session is ending (no more bytes copied).
    @ivar done: Fires with L{RelayStats} once both connections are closed.
    @ivar splicer: While the kernel moves the bytes (both sides plain TCP),
        the L{imapreferral.proxy.splice.Splicer} doing it; else L{None}.
    """

    __slots__ = (
        "_clock", "_drainCall", "_drainTimeout", "_endedBy", "_kernelSplice", "backend", "client",
        "closing", "done", "splicer",
    )  # fmt: skip

    def __init__(
        self,
        client: ITransport,
        backend: ITransport,
        clock: IReactorTime,
        drainTimeout: float = DRAIN_TIMEOUT,
        kernelSplice: bool = True,
    ) -> None:
        """
        @param kernelSplice: Whether to splice in the kernel when both sides
            allow it (L{False}: always copy through Twisted, as TLS does).
        """
        self.client = RelayEnd(self, "client", client)
        self.backend = RelayEnd(self, "backend", backend)
        self.client.peer, self.backend.peer = self.backend, self.client
        self.closing = False
        self.done: Deferred[RelayStats] = Deferred()
        self._clock = clock
        self._drainTimeout = drainTimeout
        self._endedBy: str | None = None
        self._drainCall: IDelayedCall | None = None
        self._kernelSplice = kernelSplice
        self.splicer: _splice.Splicer | None = None

    def start(self, toBackend: bytes = b"", toClient: bytes = b"") -> None:
        """
        Pair the producers, deliver what each side sent during the login
        (C{toBackend}: the client's pipelined commands; C{toClient}: what the
        backend sent after its tagged OK), then read both sides.

        Neither transport may have a producer registered, and TLS on either
        must have finished its handshake (it has, after a login): TLS pauses
        its producer while a handshake is pending, which here would stop
        reading the other side, whose own handshake may need exactly that.
        """
        if self._kernelSplice and not self.closing:
            self.splicer = _splice.attempt(self, toBackend, toClient)
            if self.splicer is not None:
                return
        for end in (self.client, self.backend):
            if not self.closing:  # a gone transport stops its producer at once
                end.transport.registerProducer(_PeerProducer(end.peer), True)
        if toClient:
            self.client.transport.write(toClient)
        if toBackend:
            self.backend.transport.write(toBackend)
        for end in (self.client, self.backend):
            if not getattr(end.transport, "connected", True):
                end.connectionLost()
        if not self.closing:
            self.client.transport.resumeProducing()
            self.backend.transport.resumeProducing()

    def _startTwisted(self) -> None:
        """
        The splice gave the transports back while the session goes on (no
        pipe could be had): copy through Twisted from now on.
        """
        self.splicer = None
        for end in (self.client, self.backend):
            end.transport.registerProducer(_PeerProducer(end.peer), True)
            end.transport.resumeProducing()

    def close(self) -> None:
        """
        End the session from here (shutdown, an operator's kick): both
        sides are flushed and closed, and aborted after C{drainTimeout}.
        """
        self._close(None)

    def _close(self, gone: RelayEnd | None) -> None:
        if self.closing:
            return
        self.closing = True
        self._endedBy = "front" if gone is None else gone.name
        if self.splicer is not None:
            self.splicer.stop()
        for side in (self.client, self.backend):
            side.transport.unregisterProducer()
        for side in (self.client, self.backend):
            if side is not gone and not side.lost:
                # Reading again: a paused TLS side could not see close_notify.
                side.transport.resumeProducing()
                side.transport.loseConnection()
        self._drainCall = self._clock.callLater(self._drainTimeout, self._abort)

    def _abort(self) -> None:
        """A side did not drain in time (its peer reads nothing): cut it."""
        for side in (self.client, self.backend):
            if not side.lost:
                side.transport.abortConnection()

    def _sideLost(self, end: RelayEnd) -> None:
        """
        C{end} is gone (its C{connectionLost}, or its consumer's
        C{stopProducing} just before). The first time, close the other side
        gracefully; once both are gone, fire L{done}.
        """
        self._close(end)
        end.lost = True
        if self.client.lost and self.backend.lost:
            if self._drainCall is not None and self._drainCall.active():
                self._drainCall.cancel()
            self.done.callback(
                RelayStats(self.client.received, self.backend.received, self._endedBy or "")
            )


def splice(
    client: ITransport,
    backend: ITransport,
    clock: IReactorTime,
    toBackend: bytes = b"",
    toClient: bytes = b"",
    drainTimeout: float = DRAIN_TIMEOUT,
    kernelSplice: bool = True,
) -> Relay:
    """
    Relay bytes between two already-connected transports, after first
    delivering C{toBackend} / C{toClient}. The owners of the two
    connections must forward their C{dataReceived} and C{connectionLost} to
    the returned relay's L{Relay.client} and L{Relay.backend}.
    """
    relay = Relay(client, backend, clock, drainTimeout, kernelSplice)
    relay.start(toBackend, toClient)
    return relay
