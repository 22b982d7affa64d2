"""
PROXY protocol (v1 and v2) in front of a listener, for HAProxy.

Behind HAProxy every connection comes from HAProxy; the PROXY header it
sends first names the real client. L{proxyProtocolFactory} wraps a listener's
factory so that C{transport.getPeer()} and C{getHost()}, as the wrapped
protocol sees them, are the header's source and destination: the login log,
the trusted-network checks, SQL's C{%r} and per-IP limits all see the
client. The wrapped factory's C{buildProtocol(addr)} is called only once the
header is parsed, with the client's address.

Why not Twisted's C{HAProxyWrappingFactory}:
  - it connects the wrapped protocol at once, so our greeting goes out
    before the header has arrived; the PROXY spec (section 2) says the
    receiver must not send anything before it has the whole header. We
    build and connect the wrapped protocol only after the header;
  - it drops a connection whose first segment is shorter than 8 (v1) or 16
    (v2) bytes (Twisted ticket #8287); we buffer until the header is
    complete, bounded by 107 bytes (v1) or 16 + the announced length (v2);
  - it accepts a header from anyone; so would anybody who can reach the
    port be able to claim any address. We take headers only from peers in
    C{trusted} (C{--haproxy-trusted-networks});
  - it rejects the bare C{PROXY UNKNOWN} that the spec allows, and accepts
    addresses that are not addresses (C{PROXY TCP4 x y 1 2}).

A connection from an untrusted peer, with a missing or malformed header, or
without a complete header within C{headerTimeout}, is closed with nothing
processed and nothing sent. C{PROXY UNKNOWN}, a v2 C{LOCAL} command (HAProxy's
health checks) and v2 C{AF_UNSPEC}/C{AF_UNIX} carry no client address: the
socket's own addresses stay in use. v2 TLVs are skipped.

TLS passthrough (HAProxy C{send-proxy-v2} in front of our implicit-TLS
listener, HAProxy not terminating TLS): the header comes before the TLS
handshake, so the PROXY wrapper goes outside::

    proxyProtocolFactory(TLSMemoryBIOFactory(contextFactory, False, imapFactory), trusted)

The wrapper copies the interfaces of the real transport (as Twisted's
C{ProtocolWrapper} does), so C{ITLSTransport} and STARTTLS keep working on a
plain listener. See C{imapreferral/examples/haproxy.cfg}.
"""

from __future__ import annotations

import ipaddress
import struct

import attrs
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

from imapreferral.logtext import quoteBytes
from imapreferral.networks import NetworkList

_log = Logger()

#: Spec section 2.1: "a 108-byte buffer is always enough to store all the
#: line and a trailing zero", i.e. at most 107 bytes with the CRLF.
V1_MAX_LENGTH = 107
V1_SIGNATURE = b"PROXY "
#: Spec section 2.2: the 12-byte v2 signature, then version/command,
#: family/transport and a 16-bit length of what follows.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_LENGTH = 16

DEFAULT_HEADER_TIMEOUT = 5.0

ProxiedAddress = IPv4Address | IPv6Address


class InvalidProxyHeader(ValueError):
    """The bytes are not a PROXY header we accept; the message says why."""


@attrs.frozen
class ProxyHeader:
    """
    A parsed PROXY header.

    @ivar version: 1 or 2.
    @ivar source: The client's address, or L{None} when the header carries
        none (C{UNKNOWN}, C{LOCAL}, C{AF_UNSPEC}, C{AF_UNIX}).
    @ivar destination: The address the client connected to, or L{None}.
    """

    version: int
    source: ProxiedAddress | None = None
    destination: ProxiedAddress | None = None


def _port(text: bytes) -> int:
    if not (text.isdigit() and len(text) <= 5 and int(text) <= 65535):
        raise InvalidProxyHeader(f"bad port {quoteBytes(text, 64)}")
    return int(text)


def _v1Address(family: bytes, text: bytes, port: bytes) -> ProxiedAddress:
    number = _port(port)
    kind, addressType = (
        (ipaddress.IPv4Address, IPv4Address)
        if family == b"TCP4"
        else (ipaddress.IPv6Address, IPv6Address)
    )
    try:
        if b"%" in text:
            # A zone id means nothing on another host, and Python takes any
            # text as one (newlines too): this address is logged as remote=.
            raise ValueError("zone id")
        return addressType("TCP", str(kind(text.decode("ascii"))), number)
    except (UnicodeDecodeError, ValueError):
        raise InvalidProxyHeader(f"bad {family.decode()} address {quoteBytes(text, 64)}") from None


def parseV1Header(line: bytes) -> ProxyHeader:
    """
    Parse one v1 line without its CRLF: C{PROXY TCP4|TCP6 src dst sport
    dport}, single spaces, or C{PROXY UNKNOWN} followed by anything, which
    the spec (section 2.1) says the receiver must ignore.

    @raise InvalidProxyHeader: if it is anything else.
    """
    fields = line.split(b" ")
    if fields[0] != b"PROXY" or len(fields) < 2:
        raise InvalidProxyHeader("not a PROXY v1 line")
    if fields[1] == b"UNKNOWN":
        return ProxyHeader(1)
    if fields[1] not in (b"TCP4", b"TCP6"):
        raise InvalidProxyHeader(f"unknown v1 protocol {quoteBytes(fields[1], 64)}")
    if len(fields) != 6:
        raise InvalidProxyHeader("v1 line needs source, destination and two ports")
    family, source, destination, sourcePort, destinationPort = fields[1:]
    return ProxyHeader(
        1,
        _v1Address(family, source, sourcePort),
        _v1Address(family, destination, destinationPort),
    )


#: Spec section 2.2: family (high nibble) -> (address struct, Twisted address type).
_V2_FAMILIES: dict[int, tuple[str, type[IPv4Address] | type[IPv6Address]]] = {
    0x1: ("!4s4sHH", IPv4Address),
    0x2: ("!16s16sHH", IPv6Address),
}
_V2_UNSPEC, _V2_UNIX = 0x0, 0x3
_V2_UNIX_LENGTH = 216
_V2_LOCAL, _V2_PROXY = 0x0, 0x1
_V2_STREAM = 0x1


def parseV2Header(header: bytes) -> ProxyHeader:
    """
    Parse a whole v2 header: signature, C{0x2X} version/command, family and
    transport, length, addresses, TLVs (skipped).

    @raise InvalidProxyHeader: on a bad signature, version or command, an
        unknown family, a datagram transport (we serve streams) or a length
        too short for the addresses.
    """
    if len(header) < V2_FIXED_LENGTH or not header.startswith(V2_SIGNATURE):
        raise InvalidProxyHeader("not a PROXY v2 header")
    versionCommand, familyTransport, length = struct.unpack("!BBH", header[12:16])
    if len(header) != V2_FIXED_LENGTH + length:
        raise InvalidProxyHeader("v2 length does not match")
    if versionCommand >> 4 != 2:
        raise InvalidProxyHeader(f"unknown v2 version {versionCommand >> 4}")
    command = versionCommand & 0xF
    if command == _V2_LOCAL:
        return ProxyHeader(2)
    if command != _V2_PROXY:
        raise InvalidProxyHeader(f"unknown v2 command {command}")
    family, transport = familyTransport >> 4, familyTransport & 0xF
    if family == _V2_UNSPEC:
        return ProxyHeader(2)
    if transport != _V2_STREAM:
        raise InvalidProxyHeader(f"v2 transport {transport} is not a stream")
    body = header[V2_FIXED_LENGTH:]
    if family == _V2_UNIX:
        if len(body) < _V2_UNIX_LENGTH:
            raise InvalidProxyHeader("v2 header too short for its AF_UNIX addresses")
        return ProxyHeader(2)
    if family not in _V2_FAMILIES:
        raise InvalidProxyHeader(f"unknown v2 address family {family}")
    layout, addressType = _V2_FAMILIES[family]
    size = struct.calcsize(layout)
    if len(body) < size:
        raise InvalidProxyHeader("v2 header too short for its addresses")
    source, destination, sourcePort, destinationPort = struct.unpack(layout, body[:size])
    return ProxyHeader(
        2,
        addressType("TCP", str(ipaddress.ip_address(source)), sourcePort),
        addressType("TCP", str(ipaddress.ip_address(destination)), destinationPort),
    )


class HeaderParser:
    """
    Sans-IO: feed it the connection's first bytes, in pieces of any size,
    until it returns the header and what followed it.

    Memory is bounded: a v1 line must end within 107 bytes, a v2 header is
    16 bytes plus its 16-bit length, and once that length is known nothing
    is parsed again until it has all arrived.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._needed = 1

    def feed(self, data: bytes) -> tuple[ProxyHeader | None, bytes]:
        """
        @return: C{(header, rest)} once complete, else C{(None, b"")}.
        @raise InvalidProxyHeader: as soon as the bytes cannot start or be
            a header we accept.
        """
        buffer = self._buffer
        buffer += data
        if len(buffer) < self._needed:
            return None, b""
        if buffer[:12] == V2_SIGNATURE[: len(buffer[:12])]:
            if len(buffer) < V2_FIXED_LENGTH:
                self._needed = V2_FIXED_LENGTH
                return None, b""
            self._needed = V2_FIXED_LENGTH + struct.unpack("!H", buffer[14:16])[0]
            if len(buffer) < self._needed:
                return None, b""
            end = self._needed
            return parseV2Header(bytes(buffer[:end])), bytes(buffer[end:])
        if buffer[:6] == V1_SIGNATURE[: len(buffer[:6])]:
            end = buffer.find(b"\r\n", 0, V1_MAX_LENGTH)
            if end < 0:
                if len(buffer) >= V1_MAX_LENGTH:
                    raise InvalidProxyHeader(f"v1 line longer than {V1_MAX_LENGTH} bytes")
                return None, b""
            return parseV1Header(bytes(buffer[:end])), bytes(buffer[end + 2 :])
        raise InvalidProxyHeader("no PROXY header")


class _ProxyProtocolWrapper(ProtocolWrapper):
    """
    Reads the header, then builds and connects the wrapped protocol with
    itself as transport. Until then C{wrappedProtocol} is L{None}.
    """

    factory: _ProxyProtocolFactory

    #: Past the header, bytes pass unchanged both ways: a relay may splice
    #: the socket underneath (L{imapreferral.proxy.splice}).
    relayTransparent = True

    def __init__(self, factory: _ProxyProtocolFactory) -> None:
        super().__init__(factory, None)  # type: ignore[arg-type]
        self._parser = HeaderParser()
        self._header: ProxyHeader | None = None
        self._timeout: IDelayedCall | None = None
        self._refused = False

    def logPrefix(self) -> str:
        if self.wrappedProtocol is None:
            return "PROXY"
        return super().logPrefix()

    def makeConnection(self, transport: ITransport) -> None:
        # ProtocolWrapper.makeConnection without connecting the wrapped protocol.
        directlyProvides(self, providedBy(transport))
        self.factory.registerProtocol(self)
        Protocol.makeConnection(self, transport)

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        if not self.factory.trusted.contains(getattr(peer, "host", None)):
            self._refuse("peer is not in the HAProxy trusted networks")
            return
        self._timeout = self.factory.clock.callLater(self.factory.headerTimeout, self._timedOut)

    def _timedOut(self) -> None:
        self._timeout = None
        self._refuse(f"no complete PROXY header within {self.factory.headerTimeout:g} s")

    def _refuse(self, why: str) -> None:
        self._refused = True
        self._cancelTimeout()
        peer = self.transport.getPeer()
        remote = str(getattr(peer, "host", peer))
        _log.warn(
            "{summary}",
            summary=f"haproxy: closing connection remote={remote}: {why}",
            peer=remote,
            why=why,
        )
        self.transport.loseConnection()

    def _cancelTimeout(self) -> None:
        if self._timeout is not None:
            self._timeout.cancel()
            self._timeout = None

    def dataReceived(self, data: bytes) -> None:
        if self.wrappedProtocol is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        if self._refused:
            return
        try:
            header, rest = self._parser.feed(data)
        except InvalidProxyHeader as e:
            self._refuse(f"bad PROXY header: {e}")
            return
        if header is not None:
            self._start(header, rest)

    def _start(self, header: ProxyHeader, rest: bytes) -> None:
        self._cancelTimeout()
        self._header = header
        self._parser = None  # type: ignore[assignment]
        wrapped = self.factory.wrappedFactory.buildProtocol(self.getPeer())
        if wrapped is None:
            self._refused = True
            self.transport.loseConnection()
            return
        self.wrappedProtocol = wrapped
        wrapped.makeConnection(self)
        if rest and not self.disconnecting:
            wrapped.dataReceived(rest)

    def getPeer(self) -> IAddress:
        if self._header is not None and self._header.source is not None:
            return self._header.source
        return self.transport.getPeer()

    def getHost(self) -> IAddress:
        if self._header is not None and self._header.destination is not None:
            return self._header.destination
        return self.transport.getHost()

    def connectionLost(self, reason: Failure) -> None:
        self._cancelTimeout()
        self.factory.unregisterProtocol(self)
        wrapped, self.wrappedProtocol = self.wrappedProtocol, None
        if wrapped is not None:
            wrapped.connectionLost(reason)


class _ProxyProtocolFactory(WrappingFactory):
    protocol = _ProxyProtocolWrapper

    def __init__(
        self,
        wrappedFactory: IProtocolFactory,
        trusted: NetworkList,
        clock: IReactorTime,
        headerTimeout: float,
    ) -> None:
        super().__init__(wrappedFactory)
        self.trusted = trusted
        self.clock = clock
        self.headerTimeout = headerTimeout

    def buildProtocol(self, addr: IAddress) -> IProtocol:  # type: ignore[override]
        # The wrapped protocol is built once the header names the client.
        return self.protocol(self)


def proxyProtocolFactory(
    wrapped: IProtocolFactory,
    trusted: NetworkList,
    clock: IReactorTime | None = None,
    headerTimeout: float = DEFAULT_HEADER_TIMEOUT,
) -> IProtocolFactory:
    """
    Make a listener's C{wrapped} factory take PROXY v1/v2 headers.

    @param wrapped: The factory to serve connections with once the header
        is read; its C{buildProtocol} gets the header's source address.
    @param trusted: Peers (HAProxy) allowed to send a header; connections
        from anywhere else are closed unanswered.
    @param clock: Time source for C{headerTimeout}; the global reactor by
        default.
    @param headerTimeout: Seconds a trusted peer has to send the whole
        header; HAProxy sends it at once, so only a stuck peer waits.
    @return: A factory to listen with.
    """
    if clock is None:
        from twisted.internet import reactor as clock  # type: ignore[assignment]
    return _ProxyProtocolFactory(wrapped, trusted, clock, headerTimeout)  # type: ignore[arg-type]
