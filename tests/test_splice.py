"""
The relay's kernel splice (L{imapreferral.proxy.splice}) over real loopback
sockets: taken for plain TCP (also under the PROXY-protocol wrapper and
through our IMAP server), not for TLS; bytes intact; a side that vanishes
mid-transfer ends both at once with every descriptor (pipes included)
closed; a side that reads nothing holds the relay to one pipe; and with no
descriptor left for a pipe, the Twisted path carries on.
"""

from __future__ import annotations

import hashlib
import os
import resource

import pytest
import pytest_twisted
from haproxyserver import freePort
from loopback import Listener, Owner, Peer, clientTLS, openDescriptors, serverTLS
from test_proxy_server import dovecot, front, isBackendOK, proxyUsers  # noqa: F401 (fixtures)
from test_relay import MB, Spliced, _stalled, within
from tlscerts import makeCertificate
from twisted.internet import reactor, task
from twisted.internet.defer import maybeDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IReadDescriptor
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from imapreferral.haproxy import proxyProtocolFactory
from imapreferral.networks import NetworkList
from imapreferral.proxy.connect import BackendConnector
from imapreferral.proxy.relay import splice
from imapreferral.proxy.splice import PIPE_SIZE, PIPES, POOL_SIZE, plainSocket
from imapreferral.testing import ServerHarness, TranscriptClient
from imapreferral.tls import loadTLS

pytestmark = pytest.mark.skipif(not hasattr(os, "splice"), reason="Linux splice(2) only")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return makeCertificate(tmp_path_factory.mktemp("splicetls"))


def watched(fd: int) -> list[object]:
    """What the reactor watches on C{fd} (reading or writing)."""
    return [d for d in reactor.getReaders() + reactor.getWriters() if d.fileno() == fd]


@pytest_twisted.ensureDeferred
async def test_plainTCPIsSplicedInTheKernel():
    """
    Both front sockets are read by the splice's descriptors, not by their
    transports, and the bytes still arrive.
    """
    pair = await Spliced().setUp(reactor)
    try:
        assert pair.relay.splicer is not None
        for transport in (pair.frontClient.transport, pair.frontBackend.transport):
            (descriptor,) = watched(transport.fileno())
            assert descriptor is not transport
            assert IReadDescriptor.providedBy(descriptor)
        pair.client.transport.write(b"up")
        pair.backend.transport.write(b"down")
        await within(5, pair.backend.waitFor(2))
        await within(5, pair.client.waitFor(4))
        assert (pair.relay.client.received, pair.relay.backend.received) == (2, 4)
        assert len(pair.frontClient.transport.dataBuffer) == 0  # nothing went through Python
    finally:
        await pair.tearDown()


@pytest.mark.parametrize("tlsSide", ["client", "backend"])
@pytest_twisted.ensureDeferred
async def test_TLSOnEitherSideKeepsTheTwistedPath(tlsSide, certificate):
    """Only two plain sockets are spliced: TLS bytes must be decrypted and encrypted."""
    frontListener, backendListener = Listener(Owner), Listener(Peer)
    tls = serverTLS(certificate)
    frontPort = await frontListener.listen(tls if tlsSide == "client" else None)
    backendPort = await backendListener.listen(tls if tlsSide == "backend" else None)
    clientEndpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", frontPort)
    backendEndpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", backendPort)
    if tlsSide == "client":
        clientEndpoint = wrapClientTLS(clientTLS(certificate), clientEndpoint)
    else:
        backendEndpoint = wrapClientTLS(clientTLS(certificate), backendEndpoint)
    client = await connectProtocol(clientEndpoint, Peer())
    frontClient = await frontListener.accepted.get()
    frontBackend = await connectProtocol(backendEndpoint, Owner())
    backend = await backendListener.accepted.get()
    await within(5, (client if tlsSide == "client" else backend).handshook)
    relay = splice(frontClient.transport, frontBackend.transport, reactor)
    frontClient.end, frontBackend.end = relay.client, relay.backend
    assert relay.splicer is None
    client.transport.write(b"hello")
    await within(5, backend.waitFor(5))
    client.transport.loseConnection()
    await within(5, relay.done)
    await within(5, backend.lost)
    await frontListener.stop()
    await backendListener.stop()


@pytest_twisted.ensureDeferred
async def test_startTLSdConnectionIsNotPlain(certificate):
    frontListener = Listener(Owner)
    port = await frontListener.listen()
    client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Peer())
    accepted = await frontListener.accepted.get()
    assert plainSocket(accepted.transport) is accepted.transport
    accepted.transport.startTLS(serverTLS(certificate))
    assert plainSocket(accepted.transport) is None
    client.transport.abortConnection()
    await within(5, client.lost)
    await frontListener.stop()


@pytest_twisted.ensureDeferred
async def test_wrappersAreLookedThroughOnlyWhenKnownToPassBytesUnchanged():
    class Counting(ProtocolWrapper):
        """Unknown to the splice: it might count or change bytes."""

    for wrapper, expected in ((ProtocolWrapper, True), (Counting, False)):
        factory = WrappingFactory(Listener(Owner))
        factory.protocol = wrapper
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        listener = factory.wrappedFactory
        client = await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), Peer()
        )
        accepted = await listener.accepted.get()
        found = plainSocket(accepted.transport)
        assert (found is accepted.transport.transport) if expected else found is None
        client.transport.abortConnection()
        await within(5, client.lost)
        await maybeDeferred(port.stopListening)


@pytest_twisted.ensureDeferred
async def test_behindThePROXYProtocolWrapperTheSocketIsSpliced():
    """The PROXY header is read by the wrapper; after it, the socket is spliced."""
    listener = Listener(Owner)
    factory = proxyProtocolFactory(listener, NetworkList.fromOption("127.0.0.0/8"))
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    backendListener = Listener(Peer)
    backendPort = await backendListener.listen()
    client = await connectProtocol(
        TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), Peer()
    )
    client.transport.write(b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 143\r\n")
    frontClient = await listener.accepted.get()
    assert frontClient.transport.getPeer().host == "203.0.113.7"
    frontBackend = await connectProtocol(
        TCP4ClientEndpoint(reactor, "127.0.0.1", backendPort), Owner()
    )
    backend = await backendListener.accepted.get()
    relay = splice(frontClient.transport, frontBackend.transport, reactor)
    frontClient.end, frontBackend.end = relay.client, relay.backend
    assert relay.splicer is not None
    client.transport.write(b"spliced")
    await within(5, backend.waitForBytes(b"spliced"))
    backend.transport.loseConnection()
    await within(1, client.lost)
    await within(1, relay.done)
    await maybeDeferred(port.stopListening)
    await backendListener.stop()


@pytest_twisted.ensureDeferred
async def test_proxiedSessionThroughOurServerIsSpliced(front):  # noqa: F811
    client = await front.connect()
    try:
        assert isBackendOK((await client.command(b"a LOGIN alice secret"))[-1])
        (relay,) = front.factory.relays
        assert relay.splicer is not None
        reply = await client.command(b"b SELECT INBOX")
        assert reply[-1].startswith(b"b OK [READ-WRITE]")
        assert relay.client.received > 0 and relay.backend.received > 0
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_proxiedSessionOnImplicitTLSIsNotSpliced(dovecot, certificate):  # noqa: F811
    options = loadTLS(str(certificate[0]), str(certificate[1]))
    harness = ServerHarness.forPassdbs(
        [proxyUsers(dovecot.port, freePort("127.0.0.1"))],
        clock=task.Clock(),
        connector=BackendConnector(reactor, task.Clock()),
        tlsContext=options,
        implicitTLS=options,
    )
    await harness.start()
    try:
        endpoint = wrapClientTLS(
            clientTLS(certificate), TCP4ClientEndpoint(reactor, "127.0.0.1", harness.port)
        )
        client = await TranscriptClient.connectTo(endpoint)
        try:
            assert isBackendOK((await client.command(b"a LOGIN alice secret"))[-1])
            (relay,) = harness.factory.relays
            assert relay.splicer is None
            assert (await client.command(b"b NOOP"))[-1].startswith(b"b OK")
        finally:
            await client.close()
    finally:
        await harness.stop()


async def _gone(fds: list[int], seconds: float = 1.0) -> None:
    """Wait (bounded) until no descriptor is watched on any of C{fds}."""
    for _ in range(int(seconds / 0.01)):
        if not any(watched(fd) for fd in fds):
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("still watched")


@pytest.mark.parametrize("vanisher", ["client", "backend"])
@pytest_twisted.ensureDeferred
async def test_sideVanishingMidTransferClosesBothAndThePipesWithinASecond(vanisher):
    """
    20 MB flowing each way; one side resets its connection: within a
    second the other is closed, the relay is done with its counts, and the
    process holds exactly the descriptors it held before (pipes included).
    """
    pair = await Spliced().setUp(reactor)
    assert pair.relay.splicer is not None
    pair.client.keep = pair.backend.keep = False
    pair.client.transport.write(os.urandom(20 * MB))
    pair.backend.transport.write(os.urandom(20 * MB))
    await within(30, pair.backend.waitFor(2 * MB))
    await within(30, pair.client.waitFor(2 * MB))
    assert pair.relay.splicer.held() <= 2 * PIPE_SIZE
    vanishing, survivor = (
        (pair.client, pair.backend) if vanisher == "client" else (pair.backend, pair.client)
    )
    fds = [pair.frontClient.transport.fileno(), pair.frontBackend.transport.fileno()]
    vanishing.transport.abortConnection()
    await within(1, survivor.lost)
    stats = await within(1, pair.relay.done)
    assert stats.endedBy == vanisher
    assert stats.toBackend >= 2 * MB and stats.toClient >= 2 * MB
    await within(1, vanishing.lost)
    await _gone(fds)
    assert len(PIPES.idle) <= POOL_SIZE
    await pair.front.stop()
    await pair.backendListener.stop()
    assert openDescriptors() == pair.descriptors


@pytest.mark.parametrize("stuck", ["client", "backend"])
@pytest_twisted.ensureDeferred
async def test_sideThatReadsNothingHoldsTheSpliceToOnePipe(stuck):
    """
    Back-pressure in the kernel: 20 MB towards a side that reads nothing;
    the splice stops reading the source with at most one pipe's worth held,
    nothing in the front's user-space buffers, and most of the 20 MB still
    with the sender. Once the side reads, all of it arrives intact.
    """
    pair = await Spliced().setUp(reactor)
    try:
        reader = pair.client if stuck == "client" else pair.backend
        writer = pair.backend if stuck == "client" else pair.client
        source = pair.relay.backend if stuck == "client" else pair.relay.client
        sourceTransport = (pair.frontBackend if stuck == "client" else pair.frontClient).transport
        sinkTransport = (pair.frontClient if stuck == "client" else pair.frontBackend).transport
        reader.keep = False
        reader.transport.pauseProducing()
        payload = os.urandom(20 * MB)
        writer.transport.write(payload)
        await _stalled(pair, source, sourceTransport)
        assert not [d for d in reactor.getReaders() if d.fileno() == sourceTransport.fileno()]
        held = pair.relay.splicer.held()
        assert 0 < held <= PIPE_SIZE
        assert len(sinkTransport.dataBuffer) + sinkTransport._tempDataLen == 0
        assert source.received < 12 * MB  # the rest waits with the writer
        reader.transport.resumeProducing()
        await within(30, reader.waitFor(len(payload)))
        assert reader.digest.digest() == hashlib.sha256(payload).digest()
        assert pair.relay.splicer.held() == 0
    finally:
        await pair.tearDown()


@pytest_twisted.ensureDeferred
async def test_noDescriptorForAPipeFallsBackToTheTwistedPath():
    """
    A process out of descriptors cannot make a pipe: the session goes on
    through Twisted, bytes intact and in order.
    """
    pair = await Spliced().setUp(reactor)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        pair.client.keep = pair.backend.keep = False
        PIPES.clear()
        used = {int(fd) for fd in os.listdir("/proc/self/fd")}
        lowestFree = min(set(range(len(used) + 1)) - used)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowestFree, hard))  # no new descriptor
        up = os.urandom(2 * MB)
        pair.client.transport.write(up)
        await within(10, pair.backend.waitFor(len(up)))
        assert pair.relay.splicer is None
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        down = os.urandom(2 * MB)
        pair.backend.transport.write(down)
        await within(10, pair.client.waitFor(len(down)))
        assert pair.backend.digest.digest() == hashlib.sha256(up).digest()
        assert pair.client.digest.digest() == hashlib.sha256(down).digest()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        await pair.tearDown()


@pytest_twisted.ensureDeferred
async def test_whatTheTransportsStillHeldGoesFirstInOrder():
    """
    The login's last words are still in Twisted's buffers when the relay
    starts (the tagged OK): they go out before the leftovers and before
    any spliced byte, even when that is more than the socket takes at once.
    """
    frontListener, backendListener = Listener(Owner), Listener(Peer)
    frontPort = await frontListener.listen()
    backendPort = await backendListener.listen()
    client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", frontPort), Peer())
    frontClient = await frontListener.accepted.get()
    frontBackend = await connectProtocol(
        TCP4ClientEndpoint(reactor, "127.0.0.1", backendPort), Owner()
    )
    backend = await backendListener.accepted.get()
    said = os.urandom(8 * MB)
    frontClient.transport.write(said)  # buffered: no reactor turn yet
    assert len(frontClient.transport._tempDataBuffer) == 1
    relay = splice(frontClient.transport, frontBackend.transport, reactor, toClient=b"leftover")
    frontClient.end, frontBackend.end = relay.client, relay.backend
    assert relay.splicer is not None
    backend.transport.write(b"spliced")
    await within(10, client.waitFor(len(said) + len(b"leftoverspliced")))
    assert bytes(client.data) == said + b"leftoverspliced"
    client.transport.loseConnection()
    await within(1, relay.done)
    await within(1, backend.lost)
    await frontListener.stop()
    await backendListener.stop()
