"""
Test doubles and helpers for users of imapreferral (and for our own tests).

  - L{MemoryPassdb}: an L{IPassdb} over a dict, or one that fails on demand.
  - L{ServerHarness}: a real listening server on an ephemeral loopback port
    that tracks its connections so a test can end with nothing left open.
  - L{TranscriptClient}: a raw IMAP client for exact-bytes transcripts.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, DeferredQueue, fail, succeed
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    UNIXClientEndpoint,
    UNIXServerEndpoint,
)
from twisted.internet.interfaces import (
    IListeningPort,
    IReactorTime,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock, deferLater
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from zope.interface import implementer

from imapreferral.imap.account import ReferralRealm
from imapreferral.imap.factory import ReferralServerFactory
from imapreferral.interfaces import IPassdb
from imapreferral.login.checker import PassdbChecker
from imapreferral.login.context import LoginContext
from imapreferral.login.fields import PassdbReply, splitExtraFields
from imapreferral.passwords import allowsCramMD5
from imapreferral.proxy.connect import BackendConnector


@implementer(IPassdb)
class MemoryPassdb:
    """
    A passdb over C{{user: PassdbReply}}; set C{error} to make every lookup
    fail with it (a database that is down). C{lookups} records each call.
    """

    def __init__(self, users: Mapping[str, PassdbReply] | None = None) -> None:
        self.users = dict(users or {})
        self.error: Exception | None = None
        self.lookups: list[tuple[str, LoginContext]] = []

    @classmethod
    def fromLines(cls, users: Mapping[str, tuple[str | None, str]]) -> MemoryPassdb:
        """C{{user: (password, "host=... nologin")}} in passwd-file field syntax."""
        return cls(
            {
                user: PassdbReply.fromFields(splitExtraFields(fields), password=password)
                for user, (password, fields) in users.items()
            }
        )

    def lookup(self, username: str, context: LoginContext) -> Deferred[PassdbReply | None]:
        self.lookups.append((username, context))
        if self.error is not None:
            return fail(self.error)
        return succeed(self.users.get(username))

    def canProvidePlaintext(self) -> bool:
        return any(
            r.password is not None and allowsCramMD5(r.password) for r in self.users.values()
        )


async def waitForDelay(clock: Clock, seconds: float, attempts: int = 200) -> None:
    """
    Wait, in bounded real time, until something (a failure delay) has been
    scheduled C{seconds} ahead on the injected C{clock}.

    @raise AssertionError: if nothing was scheduled after C{attempts} polls.
    """
    from twisted.internet import reactor

    for _ in range(attempts):
        if any(dc.getTime() == clock.seconds() + seconds for dc in clock.getDelayedCalls()):
            return
        await deferLater(reactor, 0.005, lambda: None)
    raise AssertionError(f"nothing was scheduled {seconds} s ahead on the clock")


async def answerAfterDelay(
    client: TranscriptClient, clock: Clock, data: bytes, seconds: float
) -> bytes:
    """
    Send C{data}, wait until the server has scheduled its failure delay of
    C{seconds} on C{clock}, advance the clock by that, and return the line
    the server then sends.
    """
    client.send(data)
    await waitForDelay(clock, seconds)
    clock.advance(seconds)
    return await client.line()


class _Tracked(ProtocolWrapper):
    relayTransparent = True  # bytes pass unchanged (imapreferral.proxy.splice)

    def connectionLost(self, reason: object) -> None:
        super().connectionLost(reason)
        done = self.factory.closed.pop(self, None)
        if done is not None:
            done.callback(None)


class _TrackingFactory(WrappingFactory):
    protocol = _Tracked

    def __init__(self, wrapped: Factory) -> None:
        super().__init__(wrapped)
        self.closed: dict[ProtocolWrapper, Deferred[None]] = {}

    def buildProtocol(self, addr: object) -> ProtocolWrapper:
        proto = super().buildProtocol(addr)
        self.closed[proto] = Deferred()
        return proto


class ServerHarness:
    """
    A server on C{127.0.0.1:<ephemeral>} for tests.

    Use C{await harness.start()}, talk to C{harness.port}, and
    C{await harness.stop()}: it stops listening, closes every connection and
    waits until each is gone, so the reactor is left clean.
    """

    def __init__(
        self,
        factory: Factory,
        reactor: object | None = None,
        implicitTLS: object = None,
        unixSocket: str | None = None,
    ) -> None:
        """
        @param implicitTLS: TLS options (e.g. from L{imapreferral.tls.loadTLS})
            to serve implicit TLS (imaps) instead of plaintext.
        @param unixSocket: A path to listen on (a UNIX socket) instead of
            loopback TCP.
        """
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.factory = factory
        if implicitTLS is not None:
            from twisted.protocols.tls import TLSMemoryBIOFactory

            factory = TLSMemoryBIOFactory(implicitTLS, False, factory)
        self._tracking = _TrackingFactory(factory)
        self._listening: IListeningPort | None = None
        self.port = 0
        self.unixSocket = unixSocket

    @classmethod
    def forChecker(
        cls,
        checker: ICredentialsChecker,
        clock: IReactorTime | None = None,
        **factoryArgs: object,
    ) -> ServerHarness:
        """
        A harness around a L{ReferralServerFactory} for C{checker}, asked
        the way C{twistd imapreferral --auth} asks it (through a
        L{CheckerChain}: the name normalised, an empty password refused,
        a failure made temporary) unless it is a L{PassdbChecker}. Unless
        given a C{connector}, proxy logins are not retried: a backend that
        refuses is answered at once, with no clock to advance.
        """
        from twisted.internet import reactor

        from imapreferral.login.chain import CheckerChain

        if not isinstance(checker, PassdbChecker | CheckerChain):
            checker = CheckerChain([checker])  # as twistd asks an --auth checker
        portal = Portal(ReferralRealm(), [checker])
        implicitTLS = factoryArgs.pop("implicitTLS", None)
        unixSocket: str | None = factoryArgs.pop("unixSocket", None)  # type: ignore[assignment]
        factoryArgs.setdefault("connector", BackendConnector(reactor, clock, maxReconnects=0))
        factory = ReferralServerFactory(portal, clock=clock, **factoryArgs)  # type: ignore[arg-type]
        return cls(factory, implicitTLS=implicitTLS, unixSocket=unixSocket)

    @classmethod
    def forPassdbs(
        cls,
        passdbs: Iterable[IPassdb],
        clock: IReactorTime | None = None,
        referralMode: str = "refer",
        **factoryArgs: object,
    ) -> ServerHarness:
        """
        A harness around a L{PassdbChecker} over C{passdbs}, which resolves
        C{proxy_maybe} host names with the server's connector.

        @param referralMode: See L{PassdbChecker.referralMode}.
        """
        from twisted.internet import reactor

        connector = factoryArgs.get("connector")
        if connector is None:
            connector = factoryArgs["connector"] = BackendConnector(
                reactor, clock, maxReconnects=0
            )
        checker = PassdbChecker(
            list(passdbs),
            resolveHost=connector.resolveHost,  # type: ignore[attr-defined]
            referralMode=referralMode,
        )
        return cls.forChecker(checker, clock, **factoryArgs)

    async def start(self) -> ServerHarness:
        if self.unixSocket is not None:
            endpoint: IStreamServerEndpoint = UNIXServerEndpoint(self.reactor, self.unixSocket)
        else:
            endpoint = TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1")
        self._listening = await endpoint.listen(self._tracking)
        self.port = getattr(self._listening.getHost(), "port", 0)
        return self

    async def stop(self) -> None:
        if self._listening is not None:
            await self._listening.stopListening()
            self._listening = None
        pending = list(self._tracking.closed.items())
        for proto, _ in pending:
            proto.transport.abortConnection()
        for _, done in pending:
            await done

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[TranscriptClient]:
        """
        C{async with harness.serving() as client:} start the server, connect
        one client, and close both afterwards, whatever happens.
        """
        await self.start()
        try:
            client = await self.connect()
            try:
                yield client
            finally:
                await client.close()
        finally:
            await self.stop()

    async def connect(self) -> TranscriptClient:
        """Open a L{TranscriptClient} to this server and read its greeting."""
        if self.unixSocket is not None:
            endpoint = UNIXClientEndpoint(self.reactor, self.unixSocket)
            return await TranscriptClient.connectTo(endpoint)
        return await TranscriptClient.connect(self.reactor, "127.0.0.1", self.port)


class _LineClient(LineReceiver):
    delimiter = b"\r\n"

    def __init__(self) -> None:
        self.lines: DeferredQueue[bytes] = DeferredQueue()
        self.lost: Deferred[None] = Deferred()

    def lineReceived(self, line: bytes) -> None:
        self.lines.put(line)

    def connectionLost(self, reason: object) -> None:
        self.lines.put(b"")  # EOF marker: an IMAP line is never empty
        self.lost.callback(None)


class TranscriptClient:
    """
    A raw IMAP client: send exact bytes, receive exact lines (without CRLF;
    C{b""} marks the end of the connection).

    @ivar greeting: The server's first line.
    """

    def __init__(self, proto: _LineClient) -> None:
        self._proto = proto
        self.greeting = b""

    @classmethod
    async def connect(cls, reactor: object, host: str, port: int) -> TranscriptClient:
        return await cls.connectTo(TCP4ClientEndpoint(reactor, host, port))

    @classmethod
    async def connectTo(cls, endpoint: IStreamClientEndpoint) -> TranscriptClient:
        """Connect through C{endpoint} and read the greeting."""
        proto = _LineClient()
        await endpoint.connect(Factory.forProtocol(lambda: proto))
        client = cls(proto)
        client.greeting = await client.line()
        return client

    def send(self, data: bytes) -> None:
        """Send C{data} as is (add CRLF yourself)."""
        self._proto.transport.write(data)

    async def line(self) -> bytes:
        return await self._proto.lines.get()

    def pending(self) -> int:
        """How many received lines have not been read yet."""
        return len(self._proto.lines.pending)

    async def command(self, line: bytes, tag: bytes | None = None) -> list[bytes]:
        """
        Send C{line} + CRLF; return every line up to and including the reply
        tagged C{tag} (by default the line's first word) or a continuation.
        """
        if tag is None:
            tag = line.split(b" ", 1)[0]
        self.send(line + b"\r\n")
        return await self.until(tag)

    async def until(self, tag: bytes) -> list[bytes]:
        """Read lines up to the one tagged C{tag} (or a continuation, or EOF)."""
        lines = []
        while True:
            received = await self.line()
            lines.append(received)
            if not received or received.startswith((tag + b" ", b"+")):
                return lines

    @property
    def lost(self) -> Deferred[None]:
        """Fires once the connection is gone."""
        return self._proto.lost

    def abort(self) -> None:
        """Vanish: close at once, without flushing (a client that crashed)."""
        self._proto.transport.abortConnection()

    async def close(self) -> None:
        """Close and wait until the connection is gone."""
        if not self._proto.lost.called:
            self._proto.transport.loseConnection()
        await self._proto.lost
