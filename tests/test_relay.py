"""
The byte relay over real loopback sockets: order, volume, back-pressure,
and both sides closed promptly with no descriptor left behind.

Layout of every test: a client L{Peer} connects to a front port whose
L{Owner} protocol forwards to the relay's client end; the front connects to
a backend L{Peer} with another L{Owner}; then L{splice} joins the two
front-side transports.
"""

from __future__ import annotations

import hashlib
import os

import pytest
import pytest_twisted
from loopback import Listener, Owner, Peer, clientTLS, openDescriptors, serverTLS
from tlscerts import makeCertificate
from twisted.internet import reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.error import ConnectionDone

from imapreferral.proxy.relay import RelayStats, splice

MB = 1024 * 1024


class Spliced:
    """A client peer and a backend peer joined through a relay."""

    async def setUp(
        self, clock, certificate=None, toBackend=b"", toClient=b"", drain=5.0, kernel=True
    ):
        """@param kernel: Whether the relay may splice in the kernel (plain TCP only)."""
        self.descriptors = openDescriptors()
        self.front, self.backendListener = Listener(Owner), Listener(Peer)
        tls = certificate is not None
        frontPort = await self.front.listen(serverTLS(certificate) if tls else None)
        backendPort = await self.backendListener.listen(serverTLS(certificate) if tls else None)
        clientEndpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", frontPort)
        backendEndpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", backendPort)
        if tls:
            clientEndpoint = wrapClientTLS(clientTLS(certificate), clientEndpoint)
            backendEndpoint = wrapClientTLS(clientTLS(certificate), backendEndpoint)
        self.client = await connectProtocol(clientEndpoint, Peer())
        self.frontClient = await self.front.accepted.get()
        self.frontBackend = await connectProtocol(backendEndpoint, Owner())
        self.backend = await self.backendListener.accepted.get()
        if tls:  # the relay starts after logins, so after both handshakes
            for proto in (self.client, self.frontClient, self.frontBackend, self.backend):
                await within(5, proto.handshook)
        self.relay = splice(
            self.frontClient.transport,
            self.frontBackend.transport,
            clock,
            toBackend=toBackend,
            toClient=toClient,
            drainTimeout=drain,
            kernelSplice=kernel,
        )
        assert (self.relay.splicer is not None) == (kernel and not tls)
        self.frontClient.end, self.frontBackend.end = self.relay.client, self.relay.backend
        return self

    async def tearDown(self) -> None:
        for peer in (self.client, self.backend):
            peer.transport.resumeProducing()
            peer.transport.loseConnection()
        await within(5, self.client.lost)
        await within(5, self.backend.lost)
        await within(5, self.relay.done)
        await self.front.stop()
        await self.backendListener.stop()


async def within(seconds: float, deferred):
    """Await C{deferred}, failing the test after C{seconds} of wall time."""
    return await deferred.addTimeout(seconds, reactor)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return makeCertificate(tmp_path_factory.mktemp("relaytls"))


@pytest_twisted.async_yield_fixture(params=["splice", "tcp", "tls"])
async def spliced(request, certificate):
    pair = await Spliced().setUp(
        reactor,
        certificate if request.param == "tls" else None,
        b"pipelined ",
        b"leftover ",
        kernel=request.param == "splice",
    )
    yield pair
    await pair.tearDown()


@pytest_twisted.ensureDeferred
async def test_bytesInOrderBothWaysLeftoversFirst(spliced):
    toBackend = [b"a%d " % i for i in range(200)]
    toClient = [b"b%d " % i for i in range(200)]
    for up, down in zip(toBackend, toClient, strict=True):
        spliced.client.transport.write(up)
        spliced.backend.transport.write(down)
    expectedUp = b"pipelined " + b"".join(toBackend)
    expectedDown = b"leftover " + b"".join(toClient)
    await within(5, spliced.backend.waitFor(len(expectedUp)))
    await within(5, spliced.client.waitFor(len(expectedDown)))
    assert bytes(spliced.backend.data) == expectedUp
    assert bytes(spliced.client.data) == expectedDown


@pytest.mark.parametrize("kernel", [True, False], ids=["splice", "tcp"])
@pytest_twisted.ensureDeferred
async def test_20MBEachWaySameSHA256(kernel):
    pair = await Spliced().setUp(reactor, kernel=kernel)
    try:
        pair.client.keep = pair.backend.keep = False
        up, down = os.urandom(20 * MB), os.urandom(20 * MB)
        pair.client.transport.write(up)
        pair.backend.transport.write(down)
        await within(30, pair.backend.waitFor(len(up)))
        await within(30, pair.client.waitFor(len(down)))
        assert pair.backend.digest.digest() == hashlib.sha256(up).digest()
        assert pair.client.digest.digest() == hashlib.sha256(down).digest()
    finally:
        await pair.tearDown()


async def _stalled(pair, source, transport) -> None:
    """
    Wait (bounded) until the relay has stopped reading C{source}: its
    C{transport} is no longer read and nothing more arrived (a quiet 10 ms
    alone is not enough on a busy machine).
    """
    last = -1
    for _ in range(500):
        await task.deferLater(reactor, 0.01, lambda: None)
        if source.received == last and transport not in reactor.getReaders():
            return
        last = source.received
    raise AssertionError("the relay kept reading")


@pytest.mark.parametrize("kernel", [True, False], ids=["splice", "tcp"])
@pytest.mark.parametrize("stuck", ["backend", "client"])
@pytest_twisted.ensureDeferred
async def test_sideThatNeverReadsStopsReadingTheOther(stuck, kernel):
    """Back-pressure: what the relay holds stays bounded; nothing is lost."""
    pair = await Spliced().setUp(reactor, kernel=kernel)
    try:
        reader = pair.backend if stuck == "backend" else pair.client
        writer = pair.client if stuck == "backend" else pair.backend
        sourceEnd = pair.relay.client if stuck == "backend" else pair.relay.backend
        sinkTransport = (pair.frontBackend if stuck == "backend" else pair.frontClient).transport
        sourceTransport = (pair.frontClient if stuck == "backend" else pair.frontBackend).transport
        reader.keep = False
        reader.transport.pauseProducing()
        payload = os.urandom(20 * MB)
        writer.transport.write(payload)
        await _stalled(pair, sourceEnd, sourceTransport)
        held = len(sinkTransport.dataBuffer) + sinkTransport._tempDataLen
        assert held <= 256 * 1024
        assert sourceEnd.received < 8 * MB  # most of it waits in the writer
        assert sourceTransport not in reactor.getReaders()
        reader.transport.resumeProducing()
        await within(30, reader.waitFor(len(payload)))
        assert reader.digest.digest() == hashlib.sha256(payload).digest()
    finally:
        await pair.tearDown()


@pytest.mark.parametrize("closer", ["client", "backend"])
@pytest.mark.parametrize("mode", ["splice", "tcp", "tls"])
@pytest_twisted.ensureDeferred
async def test_closeFromEitherSideClosesTheOther(closer, mode, certificate):
    tls = mode == "tls"
    pair = await Spliced().setUp(reactor, certificate if tls else None, kernel=mode == "splice")
    first, other = (
        (pair.client, pair.backend) if closer == "client" else (pair.backend, pair.client)
    )
    first.transport.write(b"last words")
    first.transport.loseConnection()
    await within(1, other.lost)
    assert bytes(other.data) == b"last words"
    # A clean close: over TLS the survivor sent close_notify.
    assert other.reason.check(ConnectionDone)
    stats = await within(1, pair.relay.done)
    assert stats.endedBy == closer
    await first.lost
    await pair.front.stop()
    await pair.backendListener.stop()
    assert openDescriptors() == pair.descriptors


@pytest.mark.parametrize("kernel", [True, False], ids=["splice", "tcp"])
@pytest_twisted.ensureDeferred
async def test_pausedSurvivorClosesOnceDrained(kernel):
    """
    Twisted's stall: the backend sends more than the client reads, then
    closes. The relay's client transport holds a paused producer; without
    unregistering it first, loseConnection would never finish. Spliced,
    the backlog waits in the pipe and the backend's end is seen only once
    the client has taken it.
    """
    clock = task.Clock()
    pair = await Spliced().setUp(clock, kernel=kernel)
    pair.client.keep = False
    pair.client.transport.pauseProducing()
    payload = os.urandom(4 * MB)
    pair.backend.transport.write(payload)
    await _stalled(pair, pair.relay.backend, pair.frontBackend.transport)
    pair.backend.transport.loseConnection()
    await pair.backend.lost
    pair.client.transport.resumeProducing()
    await within(10, pair.client.lost)
    assert pair.client.digest.digest() == hashlib.sha256(payload).digest()
    await within(1, pair.relay.done)
    assert clock.getDelayedCalls() == []
    await pair.front.stop()
    await pair.backendListener.stop()


@pytest_twisted.ensureDeferred
async def test_closeWhileProducerPausedFinishesOnceDrained():
    """
    Twisted's stall (dovecot-proxy.md §5.2): loseConnection() on a transport
    whose producer is paused never finishes once the peer has drained it,
    unless the producer is unregistered first.
    """
    clock = task.Clock()
    pair = await Spliced().setUp(clock, kernel=False)
    pair.client.keep = False
    pair.client.transport.pauseProducing()
    pair.backend.transport.write(os.urandom(4 * MB))
    await _stalled(pair, pair.relay.backend, pair.frontBackend.transport)
    assert pair.frontClient.transport.producerPaused
    pair.relay.close()
    await within(1, pair.backend.lost)
    pair.client.transport.resumeProducing()
    await within(5, pair.client.lost)
    await within(1, pair.relay.done)
    await pair.front.stop()
    await pair.backendListener.stop()


@pytest.mark.parametrize("kernel", [True, False], ids=["splice", "tcp"])
@pytest_twisted.ensureDeferred
async def test_closeFlushesThenAbortsASideThatNeverDrains(kernel):
    """L{Relay.close} (shutdown, kick): a client that reads nothing is cut."""
    clock = task.Clock()
    pair = await Spliced().setUp(clock, drain=5.0, kernel=kernel)
    pair.client.keep = False
    pair.client.transport.pauseProducing()
    pair.backend.transport.write(os.urandom(4 * MB))
    await _stalled(pair, pair.relay.backend, pair.frontBackend.transport)
    pair.relay.close()
    await within(1, pair.backend.lost)
    assert not pair.client.lost.called
    clock.advance(5.0)
    assert (await within(1, pair.relay.done)).endedBy == "front"
    pair.client.transport.resumeProducing()  # only now can it see the reset
    await within(1, pair.client.lost)
    await pair.front.stop()
    await pair.backendListener.stop()


@pytest.mark.parametrize("kernel", [True, False], ids=["splice", "tcp"])
@pytest_twisted.ensureDeferred
async def test_statsCountBothWays(kernel):
    pair = await Spliced().setUp(reactor, toBackend=b"xx", toClient=b"y", kernel=kernel)
    pair.client.transport.write(b"12345")
    pair.backend.transport.write(b"abc")
    await within(5, pair.backend.waitFor(7))
    await within(5, pair.client.waitFor(4))
    pair.backend.transport.loseConnection()
    assert await within(1, pair.relay.done) == RelayStats(
        toBackend=5, toClient=3, endedBy="backend"
    )
    await pair.client.lost
    await pair.front.stop()
    await pair.backendListener.stop()
