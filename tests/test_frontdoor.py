"""
The unauthenticated surface: greeting referrals, ID, and every pre-login
limit, each tested with a bounded hostile client over loopback.
"""

from __future__ import annotations

import socket
import time
from base64 import b64encode

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.threads import deferToThread

from imapreferral.imap.policy import validateServerURL
from imapreferral.login.penalty import AuthPenalty
from imapreferral.networks import LOOPBACK, NetworkList
from imapreferral.testing import ServerHarness, answerAfterDelay, waitForDelay

FAILED = b"NO [AUTHENTICATIONFAILED] Authentication failed."


async def _serve(passdb, clock, **kwargs):
    return await ServerHarness.forPassdbs([passdb], clock=clock, **kwargs).start()


@pytest_twisted.ensureDeferred
async def test_greetingReferralSaysByeAndCloses(passdb, clock):
    harness = await _serve(
        passdb, clock, greetingReferral="imap://imap2.example.com/",
        greetingReferralReason="Moved.\r\n* OK injected",
    )  # fmt: skip
    client = await harness.connect()
    try:
        assert (
            client.greeting == b"* BYE [REFERRAL imap://imap2.example.com/] Moved.  * OK injected"
        )
        assert await client.line() == b""
    finally:
        await client.close()
        await harness.stop()


@pytest.mark.parametrize(
    "url",
    ["imap://imap2.example.com/", "imap://imap2.example.com:1143/", "imap://[2001:db8::1]/",
     "imap://bob;AUTH=*@imap2.example.com/"],
)  # fmt: skip
def test_greetingReferralURLAccepted(url):
    assert validateServerURL(url) == url


@pytest.mark.parametrize(
    "url",
    ["http://x/", "imap://imap2.example.com", "imap://h/INBOX", "imap:///", "imap://h:port/"],
)
def test_greetingReferralURLRefused(url):
    with pytest.raises(ValueError, match="not an IMAP server URL"):
        validateServerURL(url)


@pytest_twisted.ensureDeferred
async def test_idAnswersAndIsLogged(client):
    from twisted.logger import globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        reply = await client.command(b'a ID ("name" "Thunderbird" "version" "128.0")')
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert reply == [b'* ID ("name" "imapreferral")', b"a OK ID completed."]
    assert any("Thunderbird" in str(e.get("fields")) for e in events)


@pytest.mark.parametrize("args", [b"NIL", b"()"])
@pytest_twisted.ensureDeferred
async def test_idNil(client, args):
    assert (await client.command(b"a ID " + args))[-1] == b"a OK ID completed."


@pytest.mark.parametrize("args", [b"", b"junk", b'("odd")', b"((nested) x)"])
@pytest_twisted.ensureDeferred
async def test_idBadArguments(client, args):
    assert (await client.command(b"a ID " + args))[-1] == b"a BAD Invalid ID parameters."


@pytest_twisted.ensureDeferred
async def test_badCommandBudget(client):
    for n in range(9):
        assert await client.command(b"x%d FROB" % n) == [b"x%d BAD Unsupported command" % n]
    assert await client.command(b"x9 FROB") == [b"x9 BAD Unsupported command"]
    assert await client.line() == b"* BYE Too many invalid IMAP commands."
    assert await client.line() == b""


@pytest_twisted.ensureDeferred
async def test_authorizationRefusalsSpendTheAuthFailureBudget(passdb, clock):
    """Asking to act as another user, over and over, ends like wrong passwords do."""
    harness = await _serve(passdb, clock, failureDelay=0, maxAuthFailures=3)
    client = await harness.connect()
    ir = b64encode(b"admin\0plain\0pass")
    try:
        for tag in (b"a", b"b", b"c"):
            assert await client.command(tag + b" AUTHENTICATE PLAIN " + ir) == [
                tag + b" NO [AUTHORIZATIONFAILED] Authorization failed."
            ]
        assert await client.line() == b"* BYE Too many authentication failures."
        assert await client.line() == b""
    finally:
        await client.close()
        await harness.stop()


@pytest_twisted.ensureDeferred
async def test_authFailureCapPerConnection(passdb, clock):
    harness = await _serve(passdb, clock, failureDelay=0, maxAuthFailures=3)
    client = await harness.connect()
    try:
        for tag in (b"a", b"b"):
            assert await client.command(tag + b" LOGIN plain wrong") == [tag + b" " + FAILED]
        assert await client.command(b"c LOGIN plain wrong") == [b"c " + FAILED]
        assert await client.line() == b"* BYE Too many authentication failures."
        assert await client.line() == b""
    finally:
        await client.close()
        await harness.stop()


@pytest_twisted.ensureDeferred
async def test_referralsDoNotCountAsFailures(passdb, clock):
    harness = await _serve(passdb, clock, maxAuthFailures=2)
    client = await harness.connect()
    try:
        for n in range(5):
            tag = b"r%d" % n
            assert (await client.command(tag + b" LOGIN refnl pass"))[0].startswith(
                tag + b" NO [REFERRAL "
            )
    finally:
        await client.close()
        await harness.stop()


@pytest_twisted.ensureDeferred
async def test_preauthIdleTimeout(passdb, clock):
    harness = await _serve(passdb, clock, preauthIdle=30)
    client = await harness.connect()
    try:
        clock.advance(29)
        assert await client.command(b"a NOOP") == [b"a OK NOOP No operation performed"]
        clock.advance(30)
        assert await client.line() == b"* BYE Autologout; connection idle too long"
        assert await client.line() == b""
    finally:
        await client.close()
        await harness.stop()


@pytest_twisted.ensureDeferred
async def test_preauthLifetimeEvenWhenBusy(passdb, clock):
    harness = await _serve(passdb, clock, preauthIdle=60, preauthLifetime=100)
    client = await harness.connect()
    try:
        clock.advance(50)  # a NOOP every 50 s keeps the idle timer (60 s) happy...
        assert await client.command(b"n NOOP") == [b"n OK NOOP No operation performed"]
        clock.advance(50)  # ...but not the pre-login lifetime
        assert await client.line() == b"* BYE Pre-login time limit exceeded."
        assert await client.line() == b""
    finally:
        await client.close()
        await harness.stop()


@pytest_twisted.ensureDeferred
async def test_loginEndsPreauthLimits(server, clock):
    client = await server.connect()
    try:
        assert (await client.command(b"a LOGIN plain pass"))[0].startswith(b"a OK ")
        clock.advance(1000)  # past idle and lifetime limits of the pre-login state
        assert await client.command(b"b NOOP") == [b"b OK NOOP No operation performed"]
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_overlongLineGetsBye(passdb, clock):
    harness = await _serve(passdb, clock, maxLineLength=1024)
    client = await harness.connect()
    try:
        client.send(b"a LOGIN " + b"x" * 2000 + b"\r\n")
        assert await client.line() == b"* BYE Too long argument."
        assert await client.line() == b""
    finally:
        await client.close()
        await harness.stop()


@pytest_twisted.ensureDeferred
async def test_connectionsPerAddressLimited(passdb, clock):
    harness = await _serve(
        passdb, clock, maxConnectionsPerAddress=2, trustedNetworks=NetworkList()
    )
    clients = [await harness.connect() for _ in range(2)]
    try:
        third = await harness.connect()
        assert third.greeting == (
            b"* BYE [UNAVAILABLE] Maximum number of connections from your address reached."
        )
        await third.close()
        await clients.pop().close()
        await task.deferLater(reactor, 0.05, lambda: None)
        again = await harness.connect()  # a slot is free again
        clients.append(again)
        assert again.greeting.startswith(b"* OK ")
    finally:
        for c in clients:
            await c.close()
        await harness.stop()


@pytest_twisted.ensureDeferred
async def test_trustedNetworksExemptFromPerAddressLimit(passdb, clock):
    harness = await _serve(passdb, clock, maxConnectionsPerAddress=1)  # loopback trusted
    clients = [await harness.connect() for _ in range(3)]
    try:
        assert all(c.greeting.startswith(b"* OK ") for c in clients)
    finally:
        for c in clients:
            await c.close()
        await harness.stop()


@pytest_twisted.ensureDeferred
async def test_totalConnectionsLimited(passdb, clock):
    harness = await _serve(passdb, clock, maxConnections=2)
    clients = [await harness.connect() for _ in range(2)]
    try:
        third = await harness.connect()
        assert third.greeting == b"* BYE [UNAVAILABLE] Maximum number of connections reached."
        await third.close()
    finally:
        for c in clients:
            await c.close()
        await harness.stop()


def _rssKiB() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _floodWithoutReading(port: int, megabytes: int) -> int:
    """Send NOOPs and never read; stop when the server stops reading (bounded)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    chunk = b"a NOOP\r\n" * 8192
    sent = 0
    deadline = time.monotonic() + 20
    sock.settimeout(0.5)
    try:
        while sent < megabytes * 2**20 and time.monotonic() < deadline:
            try:
                sent += sock.send(chunk)
            except TimeoutError:
                break  # the server stopped reading: back-pressure
    finally:
        sock.close()
    return sent


@pytest_twisted.ensureDeferred
async def test_clientThatNeverReadsIsThrottled(client, server, passdb, clock):
    """A NOOP flood from a client that never reads keeps the server's memory bounded."""
    before = _rssKiB()
    sent = await deferToThread(_floodWithoutReading, server.port, 50)
    grown = _rssKiB() - before
    assert sent < 20 * 2**20, f"the server kept reading: {sent} bytes accepted"
    assert grown < 40 * 1024, f"server memory grew by {grown} KiB"
    # Meanwhile other clients are served.
    assert (await client.command(b"a LOGIN refnl pass"))[0].startswith(b"a NO [REFERRAL ")


def test_penaltyDoublesAndCaps():
    clock = task.Clock()
    penalty = AuthPenalty(clock, NetworkList.fromStrings(LOOPBACK), cap=15)
    waits = []
    for _ in range(6):
        waits.append(penalty.checkDelay("192.0.2.1", 2))
        penalty.failed("192.0.2.1")
    assert waits == [0, 4, 8, 15, 15, 15]
    assert penalty.checkDelay("192.0.2.2", 2) == 0  # another address is not penalised


def test_penaltyExemptsTrustedAndForgets():
    clock = task.Clock()
    penalty = AuthPenalty(clock, NetworkList.fromStrings(LOOPBACK), forget=600)
    for _ in range(3):
        penalty.failed("127.0.0.1")
    assert penalty.checkDelay("127.0.0.1", 2) == 0
    penalty.failed("192.0.2.1")
    assert penalty.checkDelay("192.0.2.1", 2) == 4
    clock.advance(601)
    assert penalty.checkDelay("192.0.2.1", 2) == 0


def test_penaltyResetBySuccess():
    penalty = AuthPenalty(task.Clock(), NetworkList())
    penalty.failed("192.0.2.1")
    penalty.succeeded("192.0.2.1")
    assert penalty.checkDelay("192.0.2.1", 2) == 0


def test_successKeepsFailuresCountedDuringItsCheck():
    """
    A success proves the address knows one password, not the guesses
    answered while it was being checked: a client with an account of its own
    sent its guesses, then its own login (queued behind them in the hashing
    pool), and the success cleared the failures counted meanwhile.
    """
    clock = task.Clock()
    penalty = AuthPenalty(clock, NetworkList())
    started = clock.seconds()
    clock.advance(0.2)
    penalty.failed("192.0.2.1")
    penalty.succeeded("192.0.2.1", checkStarted=started)
    assert penalty.checkDelay("192.0.2.1", 2) == 4


def test_penaltyCountsIPv6Per48():
    penalty = AuthPenalty(task.Clock(), NetworkList())
    penalty.failed("2001:db8:1:2::5")
    assert penalty.checkDelay("2001:db8:1:3::7", 2) == 4


async def _answerAfterPenalty(client, clock, data, wait, delay=2.0):
    """Send C{data}; wait out the penalty before the check, then the failure delay."""
    client.send(data)
    await waitForDelay(clock, wait)
    clock.advance(wait)
    await waitForDelay(clock, delay)
    clock.advance(delay)
    return await client.line()


@pytest_twisted.ensureDeferred
async def test_penaltyWaitsBeforeCheckForUntrustedAddress(passdb, clock):
    harness = await _serve(passdb, clock, trustedNetworks=NetworkList(), plaintextAuth="always")
    client = await harness.connect()
    try:
        wrong = b"a LOGIN plain wrong\r\n"
        assert await answerAfterDelay(client, clock, wrong, 2.0) == b"a " + FAILED
        for wait in (4.0, 8.0):
            assert await _answerAfterPenalty(client, clock, wrong, wait) == b"a " + FAILED
        client.send(b"b LOGIN refnl pass\r\n")  # a right password waits too
        await waitForDelay(clock, 15.0)
        clock.advance(15.0)
        assert (await client.line()).startswith(b"b NO [REFERRAL ")
        # The referral reset the penalty.
        assert await answerAfterDelay(client, clock, b"c LOGIN plain wrong\r\n", 2.0) == (
            b"c " + FAILED
        )
    finally:
        await client.close()
        await harness.stop()


@pytest_twisted.ensureDeferred
async def test_nopasswordReferralDoesNotResetPenalty(passdb, clock):
    harness = await _serve(passdb, clock, trustedNetworks=NetworkList(), plaintextAuth="always")
    client = await harness.connect()
    try:
        wrong = b"a LOGIN plain wrong\r\n"
        assert await answerAfterDelay(client, clock, wrong, 2.0) == b"a " + FAILED
        assert await _answerAfterPenalty(client, clock, wrong, 4.0) == b"a " + FAILED
        client.send(b"b LOGIN fwd anything\r\n")
        await waitForDelay(clock, 8.0)
        clock.advance(8.0)
        assert (await client.line()).startswith(b"b NO [REFERRAL ")
        # Still penalised: fwd needs no password.
        assert await _answerAfterPenalty(client, clock, b"c LOGIN plain wrong\r\n", 8.0) == (
            b"c " + FAILED
        )
    finally:
        await client.close()
        await harness.stop()


@pytest.mark.parametrize("literal", [b"{-5}", b"{ 4}", b"{4_0}", b"{5+}", b"{}"])
@pytest_twisted.ensureDeferred
async def test_malformedLiteralSizeIsBadAndSwallowsNothing(client, literal):
    client.send(b"a LOGIN " + literal + b"\r\nb NOOP\r\n")
    assert await client.line() == b"a BAD Invalid literal size."
    assert await client.line() == b"b OK NOOP No operation performed"


@pytest_twisted.ensureDeferred
async def test_hugeLiteralIsRefused(client):
    assert (await client.command(b"a LOGIN {999999}"))[0].startswith(b"a BAD ")


@pytest_twisted.ensureDeferred
async def test_othersAreServedWhileHostileClientsHitEveryLimit(passdb, clock):
    """Bad commands, wrong passwords, an over-long line and a pipelining flood at once."""
    harness = await _serve(passdb, clock, failureDelay=0, maxLineLength=4096)
    hostile = [await harness.connect() for _ in range(4)]
    normal = await harness.connect()
    try:
        hostile[0].send(b"".join(b"x%d FROB\r\n" % n for n in range(10)))
        hostile[1].send(b"".join(b"a%d LOGIN plain wrong\r\n" % n for n in range(5)))
        hostile[2].send(b"a LOGIN " + b"x" * 10000 + b"\r\n")
        hostile[3].send(b"a LOGIN plain wrong\r\n" + b"b NOOP\r\n" * 5000)
        assert (await normal.command(b"a LOGIN refnl pass"))[0].startswith(b"a NO [REFERRAL ")
        for client, bye in zip(
            hostile[:3],
            [b"* BYE Too many invalid IMAP commands.", b"* BYE Too many authentication failures.",
             b"* BYE Too long argument."],
            strict=True,
        ):  # fmt: skip
            lines = [await client.line()]
            while lines[-1] and len(lines) < 20:
                lines.append(await client.line())
            assert bye in lines and lines[-1] == b""
        assert (await normal.command(b"b LOGIN refnl pass"))[0].startswith(b"b NO [REFERRAL ")
    finally:
        for client in [*hostile, normal]:
            await client.close()
        await harness.stop()


@pytest.mark.parametrize("tag", [b"*", b"+", b"x\xff", b"a\x01b", b"(a"])
@pytest_twisted.ensureDeferred
async def test_invalidTagIsNotEchoed(client, tag):
    client.send(tag + b" NOOP\r\n")
    assert await client.line() == b"* BAD Invalid tag."


@pytest_twisted.ensureDeferred
async def test_eightBitCommandIsUnsupported(client):
    assert await client.command(b"x \xff") == [b"x BAD Unsupported command"]


@pytest_twisted.ensureDeferred
async def test_noPythonReprsReachTheClient(client):
    assert await client.command(b"a NOOP x") == [
        b"a BAD Illegal syntax: Too many arguments for command."
    ]


def _floodBehindLogin(port: int) -> int:
    """LOGIN that waits out the failure delay, then a stream of NOOPs (bounded)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sock.recv(4096)
    sock.sendall(b"a LOGIN plain wrong\r\n")
    sent, chunk = 0, b"b NOOP\r\n" * 4096
    sock.settimeout(0.5)
    deadline = time.monotonic() + 10
    try:
        while sent < 50 * 2**20 and time.monotonic() < deadline:
            try:
                sent += sock.send(chunk)
            except TimeoutError:
                break
    finally:
        sock.close()
    return sent


@pytest_twisted.ensureDeferred
async def test_inputBehindPendingLoginIsBounded(server, clock):
    sent = await deferToThread(_floodBehindLogin, server.port)
    assert sent < 10 * 2**20, f"the server kept reading behind a pending login: {sent} bytes"
    clock.advance(2.0)  # let the held login finish before the harness closes it
