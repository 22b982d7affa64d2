"""
PROXY protocol: the header parser as tables, the wrapper over a
C{StringTransport} (exact bytes: nothing before the header), over loopback,
and behind a real HAProxy (C{send-proxy}, C{send-proxy-v2}, TLS passthrough).
"""

from __future__ import annotations

import socket
import struct

import pytest
import pytest_twisted
from haproxyserver import HAProxy, exampleConfig, freePort, haproxyExecutable
from twisted.cred.portal import Portal
from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent
from twisted.python.failure import Failure
from zope.interface import implementer

from imapreferral.haproxy import (
    V1_MAX_LENGTH,
    HeaderParser,
    InvalidProxyHeader,
    ProxyHeader,
    parseV1Header,
    parseV2Header,
    proxyProtocolFactory,
)
from imapreferral.imap.account import ReferralRealm
from imapreferral.imap.factory import ReferralServerFactory
from imapreferral.login.checker import PassdbChecker
from imapreferral.networks import NetworkList
from imapreferral.testing import ServerHarness, waitForDelay

LOOPBACK = NetworkList.fromOption("127.0.0.0/8")
ELSEWHERE = NetworkList.fromOption("10.0.0.0/8")
HAPROXY_HOST = "127.0.0.1"  # the peer our server sees
CLIENT_HOST = "127.0.0.3"  # the client HAProxy sees, named in the header
FRONT_HOST = "127.0.0.2"  # where HAProxy listens


def v2Header(
    command: int = 0x21,
    family: int = 0x11,
    body: bytes = socket.inet_aton("127.0.0.8")
    + socket.inet_aton("127.0.0.1")
    + b"\xc3\x50\x00\x8f",
) -> bytes:
    """A v2 header; by default PROXY TCP4 127.0.0.8:50000 -> 127.0.0.1:143."""
    return b"\r\n\r\n\x00\r\nQUIT\n" + struct.pack("!BBH", command, family, len(body)) + body


V1 = b"PROXY TCP4 127.0.0.7 127.0.0.1 50000 143\r\n"
V2 = v2Header()
IPV6_BODY = (
    socket.inet_pton(socket.AF_INET6, "2001:db8::7")
    + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    + b"\xc3\x50\x00\x8f"
)
SOURCE4 = IPv4Address("TCP", "127.0.0.7", 50000)
DEST4 = IPv4Address("TCP", "127.0.0.1", 143)

# -- the parser, as tables ---------------------------------------------------

V1_VALID = {
    "tcp4": (V1[:-2], ProxyHeader(1, SOURCE4, DEST4)),
    "tcp6": (
        b"PROXY TCP6 2001:db8::7 2001:db8::1 50000 143",
        ProxyHeader(
            1, IPv6Address("TCP", "2001:db8::7", 50000), IPv6Address("TCP", "2001:db8::1", 143)
        ),
    ),
    # spec 2.1: the receiver must ignore anything after UNKNOWN
    "unknown bare": (b"PROXY UNKNOWN", ProxyHeader(1)),
    "unknown with addresses": (b"PROXY UNKNOWN ffff:: ffff:: 65535 65535", ProxyHeader(1)),
    "port 0 and 65535": (
        b"PROXY TCP4 127.0.0.7 127.0.0.1 0 65535",
        ProxyHeader(1, IPv4Address("TCP", "127.0.0.7", 0), IPv4Address("TCP", "127.0.0.1", 65535)),
    ),
}

V1_INVALID = {
    "not proxy": b"GET / HTTP/1.0",
    "lower case": b"proxy TCP4 127.0.0.7 127.0.0.1 50000 143",
    "unknown protocol": b"PROXY TCP5 127.0.0.7 127.0.0.1 50000 143",
    "missing port": b"PROXY TCP4 127.0.0.7 127.0.0.1 50000",
    "extra field": b"PROXY TCP4 127.0.0.7 127.0.0.1 50000 143 x",
    "double space": b"PROXY TCP4  127.0.0.7 127.0.0.1 50000 143",
    "not an address": b"PROXY TCP4 x y 1 2",
    "ipv6 in tcp4": b"PROXY TCP4 2001:db8::7 127.0.0.1 50000 143",
    "ipv4 in tcp6": b"PROXY TCP6 127.0.0.7 2001:db8::1 50000 143",
    "port too big": b"PROXY TCP4 127.0.0.7 127.0.0.1 65536 143",
    "negative port": b"PROXY TCP4 127.0.0.7 127.0.0.1 -1 143",
    "non-ascii": b"PROXY TCP4 127.0.0.\xff 127.0.0.1 1 143",
    # Python's IPv6Address takes any zone id, newlines and escapes included,
    # and the source address is logged as remote= unquoted.
    "zone id": b"PROXY TCP6 fe80::1%eth0 2001:db8::1 50000 143",
    "zone id forging a line": b"PROXY TCP6 fe80::1%\x1b[2J\nremote=6.6.6.6 ::1 1 2",
}


@pytest.mark.parametrize(("line", "expected"), V1_VALID.values(), ids=V1_VALID.keys())
def test_v1Valid(line: bytes, expected: ProxyHeader) -> None:
    assert parseV1Header(line) == expected


@pytest.mark.parametrize("line", V1_INVALID.values(), ids=V1_INVALID.keys())
def test_v1Invalid(line: bytes) -> None:
    with pytest.raises(InvalidProxyHeader):
        parseV1Header(line)


V2_VALID = {
    "tcp4": (V2, ProxyHeader(2, IPv4Address("TCP", "127.0.0.8", 50000), DEST4)),
    "tcp6": (
        v2Header(family=0x21, body=IPV6_BODY),
        ProxyHeader(
            2, IPv6Address("TCP", "2001:db8::7", 50000), IPv6Address("TCP", "2001:db8::1", 143)
        ),
    ),
    # HAProxy's own health checks: no addresses, the socket's are used
    "local": (v2Header(command=0x20, family=0x00, body=b""), ProxyHeader(2)),
    "unspec": (v2Header(family=0x00, body=b""), ProxyHeader(2)),
    "unix": (v2Header(family=0x31, body=b"\0" * 216), ProxyHeader(2)),
    "tlvs skipped": (
        v2Header(body=V2[16:] + b"\x20\x00\x05\x01\x00\x00\x00\x00"),
        ProxyHeader(2, IPv4Address("TCP", "127.0.0.8", 50000), DEST4),
    ),
}

V2_INVALID = {
    "version 1": v2Header(command=0x11),
    "command 2": v2Header(command=0x22),
    "datagram": v2Header(family=0x12),
    "unknown family": v2Header(family=0x41),
    "too short for tcp4": v2Header(body=b"\0" * 11),
    "too short for unix": v2Header(family=0x31, body=b"\0" * 215),
    "bad signature": b"\r\n\r\n\x00\r\nQUIT\r" + V2[12:],
}


@pytest.mark.parametrize(("header", "expected"), V2_VALID.values(), ids=V2_VALID.keys())
def test_v2Valid(header: bytes, expected: ProxyHeader) -> None:
    assert parseV2Header(header) == expected


@pytest.mark.parametrize("header", V2_INVALID.values(), ids=V2_INVALID.keys())
def test_v2Invalid(header: bytes) -> None:
    with pytest.raises(InvalidProxyHeader):
        parseV2Header(header)


@pytest.mark.parametrize("header", [V1, V2], ids=["v1", "v2"])
def test_parserByteByByte(header: bytes) -> None:
    """Twisted #8287: a header in many small segments is still one header."""
    parser = HeaderParser()
    for i in range(len(header) - 1):
        assert parser.feed(header[i : i + 1]) == (None, b"")
    parsed, rest = parser.feed(header[-1:] + b"a CAPABILITY\r\n")
    assert parsed is not None and parsed.source is not None
    assert rest == b"a CAPABILITY\r\n"


PARSER_REJECTS = {
    "garbage": b"GET / HTTP/1.0\r\n",
    "tls hello": b"\x16\x03\x01\x02\x00",
    "imap command": b"a LOGIN x y\r\n",
    "v1 without crlf": b"PROXY TCP4 " + b"1" * (V1_MAX_LENGTH - 11),
    "v1 bad line": b"PROXY TCP4 x y 1 2\r\n",
    "v2 bad": v2Header(command=0x11),
}


@pytest.mark.parametrize("data", PARSER_REJECTS.values(), ids=PARSER_REJECTS.keys())
def test_parserRejects(data: bytes) -> None:
    with pytest.raises(InvalidProxyHeader):
        HeaderParser().feed(data)


def test_parserV1Bounded() -> None:
    """A v1 line may not grow past 107 bytes, fed however slowly."""
    parser = HeaderParser()
    data = b"PROXY UNKNOWN " + b"x" * (V1_MAX_LENGTH - 14)
    for i in range(len(data) - 1):
        parser.feed(data[i : i + 1])
    with pytest.raises(InvalidProxyHeader):
        parser.feed(data[-1:])


def test_parserV1LongestLine() -> None:
    """Exactly 107 bytes with the CRLF is still a header."""
    line = b"PROXY UNKNOWN " + b"x" * (V1_MAX_LENGTH - 16) + b"\r\n"
    assert len(line) == V1_MAX_LENGTH
    assert HeaderParser().feed(line) == (ProxyHeader(1), b"")


# -- the wrapper over a StringTransport: exact bytes -------------------------


def imapFactory(passdb, clock) -> ReferralServerFactory:
    return ReferralServerFactory(Portal(ReferralRealm(), [PassdbChecker([passdb])]), clock=clock)


@implementer(ITLSTransport)
class _TLSCapableTransport(StringTransport):
    def startTLS(self, contextFactory: object) -> None:
        raise NotImplementedError


def connect(factory, peer: str = HAPROXY_HOST) -> tuple[Protocol, StringTransport]:
    transport = _TLSCapableTransport(
        hostAddress=IPv4Address("TCP", "127.0.0.1", 10143),
        peerAddress=IPv4Address("TCP", peer, 40000),
    )
    protocol = factory.buildProtocol(transport.getPeer())
    protocol.makeConnection(transport)
    return protocol, transport


def disconnect(protocol: Protocol) -> None:
    protocol.connectionLost(Failure(ConnectionError("test over")))


class _Recorder(Protocol):
    """Records what the wrapped protocol is given."""

    def connectionMade(self) -> None:
        self.factory.made.append(self)
        self.peer = self.transport.getPeer()
        self.host = self.transport.getHost()

    def dataReceived(self, data: bytes) -> None:
        self.factory.data.append(data)


class _RecordingFactory(Factory):
    protocol = _Recorder

    def __init__(self) -> None:
        self.addresses: list[object] = []
        self.made: list[_Recorder] = []
        self.data: list[bytes] = []

    def buildProtocol(self, addr):
        self.addresses.append(addr)
        return super().buildProtocol(addr)


@pytest.mark.parametrize("header", [V1, V2], ids=["v1", "v2"])
def test_greetingOnlyAfterHeader(passdb, clock, header: bytes) -> None:
    """
    The PROXY spec: nothing may be sent before the whole header is in.
    The header arrives byte by byte; the greeting follows the last byte.
    """
    protocol, transport = connect(
        proxyProtocolFactory(imapFactory(passdb, clock), LOOPBACK, clock)
    )
    for i in range(len(header) - 1):
        protocol.dataReceived(header[i : i + 1])
    assert transport.value() == b""
    protocol.dataReceived(header[-1:])
    assert transport.value().startswith(b"* OK ")
    disconnect(protocol)


@pytest.mark.parametrize(
    ("header", "source", "destination"),
    [
        (V1, SOURCE4, DEST4),
        (V2, IPv4Address("TCP", "127.0.0.8", 50000), DEST4),
        (
            b"PROXY TCP6 2001:db8::7 2001:db8::1 50000 143\r\n",
            IPv6Address("TCP", "2001:db8::7", 50000),
            IPv6Address("TCP", "2001:db8::1", 143),
        ),
    ],
    ids=["v1", "v2", "v1 ipv6"],
)
def test_wrappedSeesHeaderAddresses(clock, header, source, destination) -> None:
    """buildProtocol, getPeer and getHost all name the client, not HAProxy."""
    recording = _RecordingFactory()
    protocol, _ = connect(proxyProtocolFactory(recording, LOOPBACK, clock))
    protocol.dataReceived(header)
    assert recording.addresses == [source]
    (wrapped,) = recording.made
    assert (wrapped.peer, wrapped.host) == (source, destination)
    disconnect(protocol)


@pytest.mark.parametrize(
    "header",
    [b"PROXY UNKNOWN\r\n", v2Header(command=0x20, family=0x00, body=b"")],
    ids=["v1 unknown", "v2 local"],
)
def test_noAddressKeepsSocketAddresses(clock, header) -> None:
    recording = _RecordingFactory()
    protocol, transport = connect(proxyProtocolFactory(recording, LOOPBACK, clock))
    protocol.dataReceived(header)
    (wrapped,) = recording.made
    assert (wrapped.peer, wrapped.host) == (transport.getPeer(), transport.getHost())
    disconnect(protocol)


def test_bytesAfterHeaderReachWrapped(clock) -> None:
    """A client's first command (or TLS ClientHello) in the header's segment is kept."""
    recording = _RecordingFactory()
    protocol, _ = connect(proxyProtocolFactory(recording, LOOPBACK, clock))
    protocol.dataReceived(V1 + b"a CAPABILITY\r\n")
    protocol.dataReceived(b"b NOOP\r\n")
    assert recording.data == [b"a CAPABILITY\r\n", b"b NOOP\r\n"]
    disconnect(protocol)


def test_transportInterfacesVisible(clock) -> None:
    """STARTTLS needs ITLSTransport on the transport the IMAP server sees."""
    recording = _RecordingFactory()
    protocol, _ = connect(proxyProtocolFactory(recording, LOOPBACK, clock))
    protocol.dataReceived(V2)
    assert ITLSTransport.providedBy(recording.made[0].transport)
    disconnect(protocol)


def test_headerTimeout(clock) -> None:
    recording = _RecordingFactory()
    factory = proxyProtocolFactory(recording, LOOPBACK, clock, headerTimeout=5.0)
    protocol, transport = connect(factory)
    protocol.dataReceived(V1[:10])
    clock.advance(4.9)
    assert not transport.disconnecting
    clock.advance(0.1)
    assert transport.disconnecting
    assert (transport.value(), recording.addresses) == (b"", [])
    disconnect(protocol)
    assert clock.getDelayedCalls() == []


def test_headerCancelsTimeout(clock) -> None:
    protocol, _ = connect(proxyProtocolFactory(_RecordingFactory(), LOOPBACK, clock))
    protocol.dataReceived(V1)
    assert clock.getDelayedCalls() == []
    disconnect(protocol)


@pytest.mark.parametrize("data", [b"", V1], ids=["silent", "valid header"])
def test_untrustedPeerNeverParsed(clock, data) -> None:
    recording = _RecordingFactory()
    protocol, transport = connect(proxyProtocolFactory(recording, ELSEWHERE, clock))
    assert transport.disconnecting
    protocol.dataReceived(data)
    assert (transport.value(), recording.addresses, clock.getDelayedCalls()) == (b"", [], [])
    disconnect(protocol)


# -- over loopback -----------------------------------------------------------


def loginLines(events: list[dict]) -> list[str]:
    return [line for line in map(formatEvent, events) if line.startswith("login remote=")]


class RawClient(Protocol):
    """Sends exact bytes, keeps everything received; waits are bounded."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.lost = False
        self._waiters: list[Deferred[None]] = []

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self._wake()

    def connectionLost(self, reason: object) -> None:
        self.lost = True
        self._wake()

    async def _wait(self, done, what: str, timeout: float) -> None:
        deadline = reactor.seconds() + timeout
        while not done():
            remaining = deadline - reactor.seconds()
            if remaining <= 0:
                raise AssertionError(f"no {what} within {timeout} s; got {bytes(self.received)!r}")
            waiter: Deferred[None] = Deferred()
            self._waiters.append(waiter)
            waiter.addTimeout(remaining, reactor, onTimeoutCancel=lambda *_: None)
            await waiter

    async def readUntil(self, marker: bytes, timeout: float = 5.0) -> bytes:
        def seen() -> bool:
            if marker not in self.received and self.lost:
                raise AssertionError(f"closed before {marker!r}; got {bytes(self.received)!r}")
            return marker in self.received

        await self._wait(seen, repr(marker), timeout)
        return bytes(self.received)

    async def closed(self, timeout: float = 5.0) -> bytes:
        await self._wait(lambda: self.lost, "close", timeout)
        return bytes(self.received)

    async def close(self) -> None:
        if not self.lost:
            self.transport.loseConnection()
        await self.closed()


async def rawConnect(
    host: str, port: int, bind: str | None = None, tls: object | None = None
) -> RawClient:
    client = RawClient()
    endpoint = TCP4ClientEndpoint(
        reactor, host, port, bindAddress=None if bind is None else (bind, 0)
    )
    if tls is not None:
        endpoint = wrapClientTLS(tls, endpoint)
    await endpoint.connect(Factory.forProtocol(lambda: client))
    return client


async def login(client: RawClient) -> None:
    client.transport.write(b"a LOGIN plain pass\r\n")
    assert b"\r\na OK " in await client.readUntil(b"\r\na ")


@pytest_twisted.async_yield_fixture
async def proxied(passdb, clock):
    """Our IMAP server behind the PROXY wrapper on loopback; loopback trusted."""
    factory = proxyProtocolFactory(imapFactory(passdb, clock), LOOPBACK, clock)
    harness = await ServerHarness(factory).start()
    yield harness
    await harness.stop()


@pytest.mark.parametrize(
    ("header", "source"), [(V1, "127.0.0.7"), (V2, "127.0.0.8")], ids=["v1", "v2"]
)
@pytest_twisted.ensureDeferred
async def test_loginLogsHeaderSource(proxied, logged, header, source) -> None:
    client = await rawConnect("127.0.0.1", proxied.port)
    try:
        client.transport.write(header)
        assert (await client.readUntil(b"\r\n")).startswith(b"* OK ")
        await login(client)
        assert loginLines(logged) == [
            f'login remote={source} local=127.0.0.1:143 mech=PLAIN: logged in user="plain"'
        ]
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_untrustedPeerClosedSilently(passdb, clock) -> None:
    """127.0.0.1 is not in 10.0.0.0/8: even a valid header gets nothing."""
    factory = proxyProtocolFactory(imapFactory(passdb, clock), ELSEWHERE, clock)
    harness = await ServerHarness(factory).start()
    try:
        client = await rawConnect("127.0.0.1", harness.port)
        client.transport.write(V1 + b"a LOGIN plain pass\r\n")
        assert await client.closed() == b""
        assert passdb.lookups == []
    finally:
        await harness.stop()


@pytest_twisted.ensureDeferred
async def test_garbageHeaderClosedSilently(proxied, passdb) -> None:
    client = await rawConnect("127.0.0.1", proxied.port)
    client.transport.write(b"a LOGIN plain pass\r\n")
    assert await client.closed() == b""
    assert passdb.lookups == []


@pytest_twisted.ensureDeferred
async def test_headerTimeoutClosesSilently(proxied, clock) -> None:
    client = await rawConnect("127.0.0.1", proxied.port)
    client.transport.write(V1[:20])
    await waitForDelay(clock, 5.0)
    clock.advance(5.0)
    assert await client.closed() == b""


# -- TLS passthrough and a real HAProxy ----------------------------------------


@pytest.fixture(scope="module")
def tlsOptions(tmp_path_factory):
    """(server options, client options) for C{localhost}; needs pyOpenSSL."""
    pytest.importorskip("OpenSSL", reason="TLS tests need pyOpenSSL (twisted[tls])")
    from tlscerts import makeCertificate
    from twisted.internet import ssl

    certPath, keyPath = makeCertificate(tmp_path_factory.mktemp("haproxy-tls"))
    keyPEM, certPEM = keyPath.read_bytes(), certPath.read_bytes()
    server = ssl.PrivateCertificate.loadPEM(keyPEM + certPEM).options()
    client = ssl.optionsForClientTLS("localhost", trustRoot=ssl.Certificate.loadPEM(certPEM))
    return server, client


@pytest_twisted.async_yield_fixture
async def proxiedTLS(passdb, clock, tlsOptions):
    """Implicit TLS behind the PROXY wrapper: header first, then TLS."""
    from twisted.protocols.tls import TLSMemoryBIOFactory

    tls = TLSMemoryBIOFactory(tlsOptions[0], False, imapFactory(passdb, clock))
    harness = await ServerHarness(proxyProtocolFactory(tls, LOOPBACK, clock)).start()
    yield harness
    await harness.stop()


@pytest.fixture
def haproxyPath() -> str:
    """Skip (or fail) early: pytest-twisted's async fixtures do not survive a skip."""
    return haproxyExecutable()


async def startHAProxy(executable: str, directory, plainPort: int, tlsPort: int):
    """
    The shipped example config on loopback: C{send-proxy} to C{plainPort},
    C{send-proxy-v2} to C{tlsPort} (TLS passed through), plus a
    C{send-proxy-v2} frontend for the plain listener. Returns the server and
    C{{frontend: port}} on FRONT_HOST.
    """
    ports = {name: freePort(FRONT_HOST) for name in ("imap", "imaps", "imapv2")}
    config = exampleConfig(
        {
            "bind :143": f"bind {FRONT_HOST}:{ports['imap']}",
            "bind :993": f"bind {FRONT_HOST}:{ports['imaps']}",
            "127.0.0.1:10143": f"127.0.0.1:{plainPort}",
            "127.0.0.1:10993": f"127.0.0.1:{tlsPort}",
        }
    )
    config += (
        "\nfrontend imapv2\n"
        f"    bind {FRONT_HOST}:{ports['imapv2']}\n"
        "    default_backend imapreferral_imapv2\n"
        "\nbackend imapreferral_imapv2\n"
        f"    server imapv2 127.0.0.1:{plainPort} send-proxy-v2\n"
    )
    server = HAProxy(executable, config, directory)
    await server.start([(FRONT_HOST, port) for port in ports.values()])
    return server, ports


@pytest_twisted.async_yield_fixture
async def haproxy(haproxyPath, proxied, tmp_path):
    """HAProxy in front of L{proxied}; nothing listens behind C{imaps}."""
    server, ports = await startHAProxy(haproxyPath, tmp_path, proxied.port, freePort("127.0.0.1"))
    try:
        yield ports
    finally:
        server.stop()


@pytest_twisted.async_yield_fixture
async def haproxyTLS(haproxyPath, tlsOptions, proxied, proxiedTLS, tmp_path):
    """HAProxy in front of L{proxied} and L{proxiedTLS}."""
    server, ports = await startHAProxy(haproxyPath, tmp_path, proxied.port, proxiedTLS.port)
    try:
        yield ports
    finally:
        server.stop()


@pytest_twisted.ensureDeferred
async def test_tlsPassthroughHeaderBeforeTLS(proxiedTLS, logged, tlsOptions) -> None:
    """Header in clear, then the TLS handshake: the IMAP server sees the client."""
    client = RawClient()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", proxiedTLS.port)
    await endpoint.connect(Factory.forProtocol(lambda: client))
    try:
        client.transport.write(V2)
        client.transport.startTLS(tlsOptions[1])
        assert (await client.readUntil(b"\r\n")).startswith(b"* OK ")
        await login(client)
        assert loginLines(logged) == [
            'login remote=127.0.0.8 local=127.0.0.1:143 mech=PLAIN: logged in user="plain"'
        ]
    finally:
        await client.close()


@pytest.mark.parametrize("frontend", ["imap", "imapv2"], ids=["send-proxy", "send-proxy-v2"])
@pytest_twisted.ensureDeferred
async def test_haproxyClientAddressLogged(haproxy, logged, frontend) -> None:
    """
    The client connects from 127.0.0.3; our server's TCP peer is HAProxy
    (127.0.0.1); the log names 127.0.0.3, which only the header carries.
    """
    client = await rawConnect(FRONT_HOST, haproxy[frontend], bind=CLIENT_HOST)
    try:
        assert (await client.readUntil(b"\r\n")).startswith(b"* OK ")
        await login(client)
        assert loginLines(logged) == [
            f"login remote={CLIENT_HOST} local={FRONT_HOST}:{haproxy[frontend]} mech=PLAIN: "
            'logged in user="plain"'
        ]
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_haproxyTLSPassthrough(haproxyTLS, logged, tlsOptions) -> None:
    client = await rawConnect(FRONT_HOST, haproxyTLS["imaps"], bind=CLIENT_HOST, tls=tlsOptions[1])
    try:
        assert (await client.readUntil(b"\r\n")).startswith(b"* OK ")
        await login(client)
        assert loginLines(logged) == [
            f"login remote={CLIENT_HOST} local={FRONT_HOST}:{haproxyTLS['imaps']} mech=PLAIN: "
            'logged in user="plain"'
        ]
    finally:
        await client.close()
