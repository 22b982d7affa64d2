"""
Connecting to a proxy backend over real loopback sockets: nobody
listening, a listener that never greets, fake backends (tiny Twisted
servers) that refuse, retry or refer, loop guards, and a login relayed.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from haproxyserver import freePort
from loopback import Listener, RelayedClient
from twisted.internet import reactor, task
from twisted.internet.defer import CancelledError, ensureDeferred
from twisted.protocols.basic import LineReceiver

from imapreferral.imap.backend import ForwardedClient
from imapreferral.imap.backendresult import (
    BackendLoggedIn,
    BackendMisconfigured,
    BackendRefused,
    BackendTempFail,
    BackendUnavailable,
)
from imapreferral.login.outcome import ProxyDestination
from imapreferral.proxy.connect import BackendConnector, BackendSession

BANNER = b"* OK [CAPABILITY IMAP4rev1 ID LITERAL+] fake ready"


class FakeBackend(LineReceiver):
    """
    A scripted IMAP backend: C{banner} on connect (none if L{None}), then
    each command answered with C{replies[COMMAND]} (default C{OK done};
    C{OWNPORT} in a reply becomes the port it listens on).
    """

    delimiter = b"\r\n"

    def __init__(self, banner: bytes | None, replies: dict[bytes, bytes]) -> None:
        self.banner, self.replies = banner, replies

    def connectionMade(self) -> None:
        self.factory.connections += 1
        if self.banner is not None:
            self.sendLine(self.banner)

    def lineReceived(self, line: bytes) -> None:
        self.factory.lines.append(line)
        tag, _, rest = line.partition(b" ")
        command = rest.split(b" ", 1)[0].upper()
        reply = self.replies.get(command, b"OK done")
        ownPort = b"%d" % self.factory.port.getHost().port
        self.sendLine(tag + b" " + reply.replace(b"OWNPORT", ownPort))


class FakeListener(Listener):
    def __init__(self, banner: bytes | None = BANNER, **replies: bytes) -> None:
        script = {command.encode(): reply for command, reply in replies.items()}
        super().__init__(lambda: FakeBackend(banner, script))
        self.connections = 0
        self.lines: list[bytes] = []


@pytest_twisted.async_yield_fixture
async def fakes():
    """Start fake backends on demand; stop them all afterwards."""
    started: list[FakeListener] = []

    async def start(*args, **kwargs) -> tuple[FakeListener, int]:
        listener = FakeListener(*args, **kwargs)
        started.append(listener)
        return listener, await listener.listen()

    yield start
    for listener in started:
        await listener.stop()


def destination(port: int, **kwargs) -> ProxyDestination:
    return ProxyDestination(
        **{"host": "127.0.0.1", "port": port, "user": "alice", "password": "secret", **kwargs}
    )


async def driven(clock: task.Clock, coroutine, limit: int = 1000):
    """
    Run C{coroutine}, letting real I/O happen, and move C{clock} on to each
    retry (a call due within a second) while it waits there.
    """
    deferred = ensureDeferred(coroutine)
    for _ in range(limit):
        if deferred.called:
            return await deferred
        await task.deferLater(reactor, 0.005, lambda: None)
        soon = [c.getTime() - clock.seconds() for c in clock.getDelayedCalls()]
        soon = [due for due in soon if due <= 1.0]
        if soon:
            clock.advance(max(0.0, min(soon)))
    raise AssertionError("connect did not finish")


def connector(clock, **kwargs) -> BackendConnector:
    return BackendConnector(reactor, clock, **kwargs)


@pytest_twisted.ensureDeferred
async def test_nobodyListeningRetriedThenUnavailable(clock):
    port = freePort("127.0.0.1")
    result = await driven(clock, connector(clock).connect(destination(port), ForwardedClient()))
    assert isinstance(result, BackendUnavailable)
    assert result.state == "connect"
    assert result.cause.endswith(f"(127.0.0.1:{port}, 4 attempts)")
    assert clock.seconds() == 3.0  # three retries, one second apart
    assert result.clientBytes(b"a") == (
        b"a NO [UNAVAILABLE] Account is temporarily unavailable.\r\n"
    )


@pytest_twisted.ensureDeferred
async def test_noRetryWhenTheTimeoutIsNearlyUsed(clock):
    port = freePort("127.0.0.1")
    result = await driven(
        clock, connector(clock).connect(destination(port, timeout=2.0), ForwardedClient())
    )
    assert result.cause.endswith(f"(127.0.0.1:{port}, 2 attempts)")


@pytest_twisted.ensureDeferred
async def test_listenerThatNeverGreetsTimesOut(clock, fakes):
    listener, port = await fakes(banner=None)
    pending = ensureDeferred(
        connector(clock).connect(destination(port, timeout=5.0), ForwardedClient())
    )
    while listener.connections == 0:
        await task.deferLater(reactor, 0.005, lambda: None)
    assert not pending.called
    clock.advance(5.0)
    result = await pending
    assert isinstance(result, BackendUnavailable)
    assert (result.state, result.cause) == ("banner", f"timed out after 5s (127.0.0.1:{port})")


@pytest_twisted.ensureDeferred
async def test_limitRelayedWithoutRetry(clock, fakes):
    listener, port = await fakes(LOGIN=b"NO [LIMIT] x")
    result = await driven(clock, connector(clock).connect(destination(port), ForwardedClient()))
    assert isinstance(result, BackendRefused)
    assert result.clientBytes(b"a") == b"a NO [LIMIT] x\r\n"
    assert listener.connections == 1


@pytest_twisted.ensureDeferred
async def test_unavailableRetriedThenRelayed(clock, fakes):
    listener, port = await fakes(LOGIN=b"NO [UNAVAILABLE] x")
    result = await driven(clock, connector(clock).connect(destination(port), ForwardedClient()))
    assert isinstance(result, BackendTempFail)
    assert result.clientBytes(b"a") == b"a NO [UNAVAILABLE] x\r\n"
    assert listener.connections == 4
    assert clock.seconds() == 3.0


@pytest_twisted.ensureDeferred
async def test_maxReconnectsConfigurable(clock, fakes):
    listener, port = await fakes(LOGIN=b"NO [UNAVAILABLE] x")
    connect = connector(clock, maxReconnects=0).connect(destination(port), ForwardedClient())
    assert isinstance(await driven(clock, connect), BackendTempFail)
    assert listener.connections == 1


@pytest_twisted.ensureDeferred
async def test_idCarriesTheClientAddress(clock, fakes):
    listener, port = await fakes(LOGIN=b"NO [LIMIT] x")
    client = ForwardedClient(originatingIP="192.0.2.7", originatingPort=5, ttl=7)
    await driven(clock, connector(clock).connect(destination(port), client))
    assert listener.lines[0] == (
        b'P1 ID ("x-originating-ip" "192.0.2.7" "x-originating-port" "5" '
        b'"x-proxy-ttl" "6" "x-client-transport" "insecure")'
    )


@pytest_twisted.ensureDeferred
async def test_referralFollowedOnceWithItsUser(clock, fakes):
    second, secondPort = await fakes()
    _, firstPort = await fakes(
        LOGIN=b"NO [REFERRAL imap://bob@127.0.0.1:%d/] Try there" % secondPort
    )
    session = await driven(
        clock, connector(clock).connect(destination(firstPort), ForwardedClient())
    )
    try:
        assert isinstance(session, BackendSession)
        assert (session.destination.port, session.destination.user) == (secondPort, "bob")
        assert session.attempts == 2
        assert second.lines[-1] == b'P2 LOGIN "bob" "secret"'
    finally:
        session.transport.abortConnection()
        await session.protocol.closed


@pytest.mark.parametrize(
    ("where", "cause"),
    [
        ("OWNPORT", "referral loops back to 127.0.0.1"),
        ("FRONT", "proxying loops to itself"),
        ("ANOTHER", "referral from a referral"),
    ],
    ids=["to-itself", "to-the-front", "twice"],
)
@pytest_twisted.ensureDeferred
async def test_referralLoopsRefused(clock, fakes, where, cause):
    frontPort = freePort("127.0.0.1")
    _, another = await fakes(LOGIN=b"NO [REFERRAL imap://127.0.0.1:1/] again")
    port = {"FRONT": b"%d" % frontPort, "ANOTHER": b"%d" % another}.get(where, b"OWNPORT")
    _, firstPort = await fakes(LOGIN=b"NO [REFERRAL imap://127.0.0.1:" + port + b"/] there")
    front = connector(clock, selfAddresses=[("127.0.0.1", frontPort)])
    result = await driven(clock, front.connect(destination(firstPort), ForwardedClient()))
    assert isinstance(result, BackendMisconfigured)
    assert cause in result.cause
    assert result.clientBytes(b"a") == b"a NO [SERVERBUG] Account is temporarily unavailable.\r\n"


@pytest_twisted.ensureDeferred
async def test_destinationThatIsOurselfRefused(clock):
    front = connector(clock, selfAddresses=[("127.0.0.1", 1143)])
    result = await front.connect(destination(1143), ForwardedClient())
    assert isinstance(result, BackendMisconfigured)
    assert "proxying loops to itself" in result.cause


@pytest_twisted.ensureDeferred
async def test_ttlOfOneRefusesToProxy(clock, fakes):
    listener, port = await fakes()
    result = await connector(clock).connect(destination(port), ForwardedClient(ttl=1))
    assert isinstance(result, BackendMisconfigured)
    assert result.cause.startswith("TTL reached zero")
    assert listener.connections == 0


@pytest.mark.parametrize(
    ("host", "hostip"),
    [("localhost", None), ("backend.invalid", "127.0.0.1")],
    ids=["resolved", "hostip-skips-resolving"],
)
@pytest_twisted.ensureDeferred
async def test_hostResolvedUnlessHostip(clock, fakes, host, hostip):
    _, port = await fakes()
    result = await driven(
        clock,
        connector(clock).connect(destination(port, host=host, hostip=hostip), ForwardedClient()),
    )
    assert isinstance(result, BackendSession)
    result.transport.abortConnection()
    await result.protocol.closed


@pytest_twisted.ensureDeferred
async def test_unresolvableHost(clock):
    result = await driven(
        clock,
        connector(clock).connect(destination(143, host="backend.invalid"), ForwardedClient()),
    )
    assert isinstance(result, BackendUnavailable)
    assert result.state == "connect"
    assert "cannot resolve backend.invalid" in result.cause


@pytest_twisted.ensureDeferred
async def test_sourceIPBound(clock, fakes):
    listener, port = await fakes()
    seen = []
    original = listener.buildProtocol
    listener.buildProtocol = lambda addr: seen.append(addr.host) or original(addr)
    result = await driven(
        clock, connector(clock).connect(destination(port, sourceIP="127.0.0.2"), ForwardedClient())
    )
    assert isinstance(result, BackendSession)
    assert seen == ["127.0.0.2"]
    result.transport.abortConnection()
    await result.protocol.closed


@pytest_twisted.ensureDeferred
async def test_loggedInSessionRelaysWithLeftover(clock, fakes):
    """Backend bytes right behind its tagged OK reach the client first."""
    _, port = await fakes(LOGIN=b"OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n* 1 EXISTS")
    session = await driven(clock, connector(clock).connect(destination(port), ForwardedClient()))
    assert session.result == BackendLoggedIn(
        b"OK [CAPABILITY IMAP4rev1 IDLE] Logged in",
        (b"IMAP4rev1", b"IDLE"),
        leftover=b"* 1 EXISTS\r\n",
    )
    client = await RelayedClient.start(session, clock, toBackend=b"b NOOP\r\n")
    assert await client.command(b"", b"b OK done\r\n") == b"* 1 EXISTS\r\nb OK done\r\n"
    await client.close()


class _SilentResolver:
    """A name resolver that never answers (a DNS server gone quiet)."""

    def resolveHostName(self, receiver, hostName, portNumber=0, **kwargs):
        receiver.resolutionBegan(None)


class _QuietReactor:
    nameResolver = _SilentResolver()


@pytest_twisted.ensureDeferred
async def test_resolveHostGivesUpAfterItsTimeout(clock):
    lookup = ensureDeferred(BackendConnector(_QuietReactor(), clock).resolveHost("h", 143, 5.0))
    clock.advance(4.9)
    assert not lookup.called
    clock.advance(0.1)
    assert await lookup == []


@pytest_twisted.ensureDeferred
async def test_resolveHostCancelledLeavesNoTimer(clock):
    """The client went away while its proxy_maybe host was being resolved."""
    lookup = ensureDeferred(BackendConnector(_QuietReactor(), clock).resolveHost("h", 143, 5.0))
    lookup.cancel()
    with pytest.raises(CancelledError):
        await lookup
    assert clock.getDelayedCalls() == []
