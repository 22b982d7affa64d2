"""
Loopback peers for proxy tests: a protocol that counts and hashes what it
receives and can stop reading, and a listener that hands out the
protocols it accepted. Real sockets on 127.0.0.1, ports from the OS.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from imapreferral.proxy.relay import Relay
from imapreferral.proxy.splice import PIPES


def openDescriptors() -> int:
    """
    How many file descriptors this process holds, once the splice's pool
    of idle pipes (bounded, shared by all sessions) is emptied.
    """
    PIPES.clear()
    return len(os.listdir("/proc/self/fd"))


@implementer(IHandshakeListener)
class HandshakeAware(Protocol):
    """A protocol whose C{handshook} fires when its TLS handshake is done."""

    def __init__(self) -> None:
        self.handshook: Deferred[None] = Deferred()

    def handshakeCompleted(self) -> None:
        self.handshook.callback(None)


class Peer(HandshakeAware):
    """
    An outside party (client or backend): hashes what arrives, keeps it if
    asked, and lets a test wait for an amount or for the end.
    """

    def __init__(self, keep: bool = True) -> None:
        super().__init__()
        self.keep = keep
        self.data = bytearray()
        self.received = 0
        self.digest = hashlib.sha256()
        self.lost: Deferred[None] = Deferred()
        self.reason: Failure | None = None
        self._waiting: list[tuple[Callable[[], bool], Deferred[None]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        self.digest.update(data)
        if self.keep:
            self.data += data
        for entry in list(self._waiting):
            if entry[0]():
                self._waiting.remove(entry)
                entry[1].callback(None)

    def connectionLost(self, reason: Failure) -> None:
        self.reason = reason
        self.lost.callback(None)

    def waitFor(self, count: int) -> Deferred[None]:
        """Fires once C{count} bytes have arrived in all."""
        return self.waitUntil(lambda: self.received >= count)

    def waitForBytes(self, text: bytes) -> Deferred[None]:
        """Fires once C{text} is among what arrived (kept data only)."""
        return self.waitUntil(lambda: text in self.data)

    def waitUntil(self, done: Callable[[], bool]) -> Deferred[None]:
        waiting: Deferred[None] = Deferred()
        if done():
            waiting.callback(None)
        else:
            self._waiting.append((done, waiting))
        return waiting


class Owner(HandshakeAware):
    """What owns a front-side connection: forwards its events to a relay end."""

    end = None

    def dataReceived(self, data: bytes) -> None:
        self.end.dataReceived(data)

    def connectionLost(self, reason: Failure) -> None:
        if self.end is not None:
            self.end.connectionLost(reason)


class Listener(Factory):
    """Builds C{protocol()} per connection and queues each one accepted."""

    def __init__(self, protocol: type[Protocol] = Peer) -> None:
        self.protocol = protocol
        self.accepted: DeferredQueue[Protocol] = DeferredQueue()
        self.port = None

    def buildProtocol(self, addr):
        proto = self.protocol()
        proto.factory = self
        original = proto.connectionMade

        def connectionMade() -> None:
            original()
            self.accepted.put(proto)

        proto.connectionMade = connectionMade
        return proto

    async def listen(self, tlsOptions=None) -> int:
        factory = self if tlsOptions is None else TLSMemoryBIOFactory(tlsOptions, False, self)
        self.port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        return self.port.getHost().port

    async def stop(self) -> None:
        if self.port is not None:
            await self.port.stopListening()


def serverTLS(certificate) -> object:
    """Server-side TLS options from a C{tlscerts.makeCertificate} pair."""
    certPath, keyPath = certificate
    pem = certPath.read_bytes() + keyPath.read_bytes()
    return PrivateCertificate.loadPEM(pem).options()


def clientTLS(certificate, name: str = "localhost") -> object:
    """Client-side TLS options trusting the test certificate, checking C{name}."""
    return optionsForClientTLS(name, trustRoot=Certificate.loadPEM(certificate[0].read_bytes()))


class RelayedClient:
    """
    A raw client on a front port whose connection is relayed to an
    already logged-in backend session (L{imapreferral.proxy.connect}).
    """

    @classmethod
    async def start(cls, session, clock, toBackend: bytes = b"") -> RelayedClient:
        self = cls()
        self.front = Listener(Owner)
        port = await self.front.listen()
        self.peer = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Peer())
        frontSide = await self.front.accepted.get()
        self.relay = Relay(frontSide.transport, session.transport, clock)
        frontSide.end = self.relay.client
        self.relay.start(toBackend=toBackend, toClient=session.attach(self.relay.backend))
        return self

    async def command(self, line: bytes, until: bytes, seconds: float = 10) -> bytes:
        """Send C{line}; return everything received once C{until} arrived."""
        self.peer.transport.write(line)
        await self.peer.waitForBytes(until).addTimeout(seconds, reactor)
        return bytes(self.peer.data)

    async def close(self):
        """Close the client; the relay closes the backend side; return stats."""
        self.peer.transport.loseConnection()
        stats = await self.relay.done.addTimeout(5, reactor)
        await self.front.stop()
        return stats
