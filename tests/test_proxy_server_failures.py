"""
The issue's failure table through our IMAP server: a real client on the
front, small scripted backends (Twisted servers on loopback) behind it,
the exact bytes of each tagged reply, retries counted on the backend and
timed on the injected clock; after each failure the client logs in again
on the same connection.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from loopback import Listener
from twisted.internet import reactor, task
from twisted.logger import formatEvent
from twisted.protocols.basic import LineReceiver

from imapreferral.proxy.connect import BackendConnector
from imapreferral.testing import MemoryPassdb, ServerHarness

BANNER = b"* OK [CAPABILITY IMAP4rev1 ID LITERAL+] fake ready"
LOGGED_IN = b"OK [CAPABILITY IMAP4rev1 ID LITERAL+] done"
UNAVAILABLE = b"NO [UNAVAILABLE] Account is temporarily unavailable."
SERVERBUG = b"NO [SERVERBUG] Account is temporarily unavailable."


class ScriptedBackend(LineReceiver):
    """
    A fake IMAP backend: the banner on connect (none if L{None}), then each
    command answered from the script, by command name (default
    C{TAG OK done}). In a reply C{TAG} becomes the command's tag and
    C{OWNPORT} the port it listens on; a reply ending in C{CLOSE} closes
    the connection after the bytes before it.
    """

    delimiter = b"\r\n"

    def connectionMade(self) -> None:
        self.factory.connections += 1
        if self.factory.banner is not None:
            self.sendLine(self.factory.banner)

    def connectionLost(self, reason: object) -> None:
        self.factory.closed += 1

    def lineReceived(self, line: bytes) -> None:
        self.factory.lines.append(line)
        tag, _, rest = line.partition(b" ")
        command = rest.split(b" ", 1)[0].upper()
        reply = self.factory.script.get(command, b"TAG OK done")
        ownPort = b"%d" % self.factory.port.getHost().port
        reply = reply.replace(b"TAG", tag).replace(b"OWNPORT", ownPort)
        close = reply.endswith(b"CLOSE")
        reply = reply.removesuffix(b"CLOSE").removesuffix(b"\r\n")
        if reply:
            self.sendLine(reply)
        if close:
            self.transport.loseConnection()


class ScriptedListener(Listener):
    def __init__(self, banner: bytes | None, script: dict[bytes, bytes]) -> None:
        super().__init__(ScriptedBackend)
        self.banner, self.script = banner, script
        self.connections = self.closed = 0
        self.lines: list[bytes] = []


@pytest_twisted.async_yield_fixture
async def backends():
    """Start scripted backends on demand (C{LOGIN=b"..."}); stop them all after."""
    started: list[ScriptedListener] = []

    async def start(banner: bytes | None = BANNER, **script: bytes):
        listener = ScriptedListener(banner, {k.encode(): v for k, v in script.items()})
        started.append(listener)
        return listener, await listener.listen()

    yield start
    for listener in started:
        await listener.stop()


@pytest_twisted.async_yield_fixture
async def server(clock, backends):
    """
    Our server on C{clock} with Dovecot's retry policy (conftest's C{client}
    connects to it). C{server.route(user, fields)} adds a user (password
    C{secret}) with passdb fields; C{good} is proxied to a backend that
    accepts every login.
    """
    passdb = MemoryPassdb()
    harness = ServerHarness.forPassdbs(
        [passdb], clock=clock, connector=BackendConnector(reactor, clock)
    )

    def route(user: str, fields: str) -> None:
        passdb.users.update(MemoryPassdb.fromLines({user: ("{PLAIN}secret", fields)}).users)

    harness.route = route
    _, goodPort = await backends()
    route("good", f"proxy host=127.0.0.1 port={goodPort}")
    await harness.start()
    yield harness
    await harness.stop()


async def reply(
    clock: task.Clock, client, data: bytes, limit: int = 2000, horizon: float = 1.0
) -> list[bytes]:
    """
    Send C{data}; let real I/O happen and move C{clock} on to each retry
    (a call due within C{horizon} seconds: 2 lets the failure delay pass)
    until the tagged reply; every line up to it.
    """
    tag = data.split(b" ", 1)[0]
    client.send(data)
    lines: list[bytes] = []
    for _ in range(limit):
        while client.pending():
            lines.append(await client.line())
            if lines[-1].startswith(tag + b" ") or not lines[-1]:
                return lines
        await task.deferLater(reactor, 0.005, lambda: None)
        soon = [c.getTime() - clock.seconds() for c in clock.getDelayedCalls()]
        soon = [due for due in soon if due <= horizon]
        if soon:
            clock.advance(max(0.0, min(soon)))
    raise AssertionError(f"no tagged reply; got {lines}")


async def triesAgain(clock, client) -> None:
    """After a failure the client logs in again on the same connection."""
    lines = await reply(clock, client, b"b LOGIN good secret\r\n")
    assert lines == [b"b " + LOGGED_IN]


@pytest.mark.parametrize(
    ("script", "expected", "connections"),
    [
        ({"LOGIN": b"TAG NO [LIMIT] x"}, [b"a NO [LIMIT] x"], 1),
        ({"LOGIN": b"TAG NO [UNAVAILABLE] x"}, [b"a NO [UNAVAILABLE] x"], 4),
        ({"LOGIN": b"TAG NO [EXPIRED] Password expired"}, [b"a NO [EXPIRED] Password expired"], 1),
        ({"LOGIN": b"TAG NO [REFERRAL imap://127.0.0.1:OWNPORT/] there"}, [b"a " + SERVERBUG], 1),
        ({"LOGIN": b"* BYE going away\r\nCLOSE"}, [b"a " + UNAVAILABLE], 4),
        ({"LOGIN": b"CLOSE"}, [b"a " + UNAVAILABLE], 4),
        ({"LOGIN": b"TAG NO [SERVERBUG] broken"}, [b"a " + SERVERBUG], 1),
    ],
    ids=[
        "limit",
        "unavailable-retried",
        "expired",
        "referral-to-itself",
        "bye",
        "closes",
        "serverbug",
    ],
)
@pytest_twisted.ensureDeferred
async def test_backendFailureReachesTheClientWithItsTag(
    server, client, clock, backends, script, expected, connections
):
    backend, port = await backends(**script)
    server.route("alice", f"proxy host=127.0.0.1 port={port}")
    assert await reply(clock, client, b"a LOGIN alice secret\r\n") == expected
    assert backend.connections == connections
    await triesAgain(clock, client)


@pytest_twisted.ensureDeferred
async def test_unavailableRetriedOneSecondApart(server, client, clock, backends):
    _, port = await backends(LOGIN=b"TAG NO [UNAVAILABLE] x")
    server.route("alice", f"proxy host=127.0.0.1 port={port}")
    started = clock.seconds()
    await reply(clock, client, b"a LOGIN alice secret\r\n")
    assert clock.seconds() - started == 3.0


@pytest_twisted.ensureDeferred
async def test_backendThatNeverGreetsIsUnavailableAfterProxyTimeout(
    server, client, clock, backends
):
    backend, port = await backends(banner=None)
    server.route("alice", f"proxy host=127.0.0.1 port={port} proxy_timeout=5")
    client.send(b"a LOGIN alice secret\r\n")
    for _ in range(400):
        if backend.connections:
            break
        await task.deferLater(reactor, 0.005, lambda: None)
    clock.advance(4.9)
    await task.deferLater(reactor, 0.02, lambda: None)
    assert client.pending() == 0
    clock.advance(0.1)
    assert await client.line() == b"a " + UNAVAILABLE
    assert backend.connections == 1  # no time left for a retry
    await triesAgain(clock, client)


@pytest_twisted.ensureDeferred
async def test_alertDuringLoginPassedOnBeforeTheTaggedOK(server, client, clock, backends):
    _, port = await backends(LOGIN=b"* OK [ALERT] Quota nearly full\r\nTAG OK done")
    server.route("alice", f"proxy host=127.0.0.1 port={port}")
    assert await reply(clock, client, b"a LOGIN alice secret\r\n") == [
        b"* OK [ALERT] Quota nearly full",
        b"a " + LOGGED_IN,
    ]


@pytest_twisted.ensureDeferred
async def test_referralFollowedToASecondBackendAndSessionWorks(server, client, clock, backends):
    second, secondPort = await backends()
    first, firstPort = await backends(
        LOGIN=b"TAG NO [REFERRAL imap://bob@127.0.0.1:%d/] Try there" % secondPort
    )
    server.route("alice", f"proxy host=127.0.0.1 port={firstPort}")
    assert await reply(clock, client, b"a LOGIN alice secret\r\n") == [b"a " + LOGGED_IN]
    assert second.lines[-1].endswith(b' LOGIN "bob" "secret"')
    assert await client.command(b"b NOOP") == [b"b OK done"]
    assert second.lines[-1] == b"b NOOP"
    assert (first.connections, second.connections) == (1, 1)


@pytest_twisted.ensureDeferred
async def test_proxyMaybeToAnotherServerByNameProxies(server, client, clock, backends):
    backend, port = await backends()
    server.route("maybe", f"proxy_maybe host=localhost port={port}")
    assert await reply(clock, client, b"a LOGIN maybe secret\r\n") == [b"a " + LOGGED_IN]
    assert backend.lines[-1].endswith(b' LOGIN "maybe" "secret"')


@pytest.mark.parametrize(
    ("banner", "fields"),
    [
        (b"* OK [CAPABILITY IMAP4rev1 LOGINDISABLED] plaintext", ""),
        (b"* OK [CAPABILITY IMAP4rev1] no tls", " starttls=yes"),
    ],
    ids=["logindisabled-on-plaintext", "starttls-not-offered"],
)
@pytest_twisted.ensureDeferred
async def test_misconfiguredBackendIsServerBugWithoutRetry(
    server, client, clock, backends, banner, fields
):
    backend, port = await backends(banner=banner)
    server.route("alice", f"proxy host=127.0.0.1 port={port}{fields}")
    assert await reply(clock, client, b"a LOGIN alice secret\r\n") == [b"a " + SERVERBUG]
    assert backend.connections == 1
    assert not any(b"LOGIN" in line for line in backend.lines)  # no password sent
    await triesAgain(clock, client)


@pytest_twisted.ensureDeferred
async def test_failureIsOneLogLineWithUserBackendStateAndCause(
    server, client, clock, backends, logged
):
    _, port = await backends(LOGIN=b"TAG NO [LIMIT] x")
    server.route("alice", f"proxy host=127.0.0.1 port={port}")
    await reply(clock, client, b"a LOGIN alice secret\r\n")
    failed = [e for e in logged if e.get("event") == "proxy failed"]
    assert [(e["user"], e["backend"], e["state"], e["cause"]) for e in failed] == [
        ("alice", f"127.0.0.1:{port}", "login", f"NO [LIMIT] x (127.0.0.1:{port})")
    ]


async def waitUntil(done, seconds: float = 1.0) -> None:
    """Let real I/O happen until C{done()}, bounded by C{seconds} of real time."""
    for _ in range(int(seconds / 0.005)):
        if done():
            return
        await task.deferLater(reactor, 0.005, lambda: None)
    raise AssertionError("condition not met in time")


@pytest_twisted.ensureDeferred
async def test_clientGoneDuringBackendLoginClosesTheBackendAtOnce(server, clock, backends):
    """Not after proxy_timeout: a vanished client holds no backend connection."""
    backend, port = await backends(banner=None)
    server.route("alice", f"proxy host=127.0.0.1 port={port}")
    client = await server.connect()
    client.send(b"a LOGIN alice secret\r\n")
    await waitUntil(lambda: backend.connections == 1)
    await client.close()
    await waitUntil(lambda: backend.closed == 1)
    assert clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_clientGoneBetweenRetriesStopsRetrying(server, clock, backends):
    backend, port = await backends(LOGIN=b"TAG NO [UNAVAILABLE] x")
    server.route("alice", f"proxy host=127.0.0.1 port={port}")
    client = await server.connect()
    client.send(b"a LOGIN alice secret\r\n")
    retry = clock.seconds() + 1.0
    await waitUntil(lambda: any(c.getTime() == retry for c in clock.getDelayedCalls()))
    await client.close()
    await waitUntil(lambda: not any(c.getTime() == retry for c in clock.getDelayedCalls()))
    clock.advance(30)
    assert backend.connections == 1


@pytest_twisted.ensureDeferred
async def test_commandsPipelinedBehindAFailedLoginAreAnsweredHereInOrder(
    server, client, clock, backends
):
    backend, port = await backends(LOGIN=b"TAG NO [LIMIT] x")
    server.route("alice", f"proxy host=127.0.0.1 port={port}")
    lines = await reply(
        clock, client, b"a LOGIN alice secret\r\nb NOOP\r\nc LOGIN good secret\r\n"
    )
    assert lines == [b"a NO [LIMIT] x"]
    assert await client.line() == b"b OK NOOP No operation performed"
    assert await client.line() == b"c " + LOGGED_IN
    assert not any(b"NOOP" in line for line in backend.lines)


@pytest_twisted.ensureDeferred
async def test_proxyLineKeepsTheRealAddressFirstAndQuotesWhatOthersChose(
    server, client, clock, backends, logged
):
    """A user name or a backend's text cannot forge C{remote=} in a proxy line."""
    _, port = await backends(LOGIN=b'TAG NO [LIMIT] x" remote=6.6.6.6')
    forged = 'evil" remote=6.6.6.6 x="'
    server.route(forged, f"proxy host=127.0.0.1 port={port}")
    await reply(clock, client, b'a LOGIN "evil\\" remote=6.6.6.6 x=\\"" secret\r\n')
    (line,) = [formatEvent(e) for e in logged if e.get("event") == "proxy failed"]
    assert line.startswith(f"proxy failed: remote=127.0.0.1 backend=127.0.0.1:{port} ")
    assert line.count("remote=") == 3 and line.index("remote=127.0.0.1") < line.index('user="')
    assert 'user="evil\\" remote=6.6.6.6 x=\\""' in line
    assert 'cause="NO [LIMIT] x\\" remote=6.6.6.6' in line


@pytest.mark.parametrize(
    ("fields", "answer", "event"),
    [
        (" nopassword", b"TAG NO [AUTHENTICATIONFAILED] no", "authentication failed"),
        (" nopassword", b"TAG NO wrong", "authentication failed"),
        ("", b"TAG NO [AUTHENTICATIONFAILED] no", "failed"),
        (" nopassword", b"TAG NO [UNAVAILABLE] x", "failed"),
        (" nopassword", b"TAG NO [LIMIT] x", "failed"),
    ],
    ids=["nopassword-refused", "nopassword-bare-no", "checked-here", "unavailable", "limit"],
)
@pytest_twisted.ensureDeferred
async def test_proxyLineCallsOnlyABackendPasswordCheckAnAuthenticationFailure(
    server, client, clock, backends, logged, fields, answer, event
):
    """
    Only where the backend checked a password the front did not (the line
    examples/fail2ban/ counts); not a password the front accepted, nor a
    backend that is unavailable or refuses for another reason.
    """
    _, port = await backends(LOGIN=answer)
    server.route("alice", f"proxy host=127.0.0.1 port={port}{fields}")
    await reply(clock, client, b"a LOGIN alice secret\r\n", horizon=2.0)
    proxyEvents = [e["event"] for e in logged if "session" in e and "state" in e]
    assert proxyEvents == [f"proxy {event}"]
    (line,) = [formatEvent(e) for e in logged if e.get("event") == f"proxy {event}"]
    assert line.startswith(f"proxy {event}: remote=127.0.0.1 ")
