"""
Proxy logins through our IMAP server to a real Dovecot: every login path
proxied, then SELECT and FETCH of the marker through the splice; the
failure rows of the issue's table with their exact bytes; the passdb's
C{nopassword} leaving the decision to the backend.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil

import pytest
import pytest_twisted
from dovecotbackend import USERS, startDovecot
from haproxyserver import freePort
from loopback import Listener, Peer, openDescriptors
from test_server_wire import MECHS
from twisted.internet import reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.utils import getProcessOutputAndValue

from imapreferral.login.fields import PassdbReply, splitExtraFields
from imapreferral.proxy.connect import BackendConnector
from imapreferral.testing import MemoryPassdb, ServerHarness, answerAfterDelay

UNAVAILABLE = b"NO [UNAVAILABLE] Account is temporarily unavailable."
FAILED = b"NO [AUTHENTICATIONFAILED] Authentication failed."


@pytest.fixture(scope="module")
def dovecot():
    backend = startDovecot()
    yield backend
    backend.stop()


def proxyUsers(port: int, nobodyPort: int, **more: tuple[str, str]) -> MemoryPassdb:
    """Front users proxied to the Dovecot on C{port} (and one to nobody)."""
    to = f"proxy host=127.0.0.1 port={port}"
    return MemoryPassdb.fromLines(
        {
            "alice": ("{PLAIN}" + USERS["alice"], to),
            "bob": ("{PLAIN}" + USERS["bob"], to),
            "maybe": ("{PLAIN}secret", f"proxy_maybe host=127.0.0.1 port={port} destuser=alice"),
            "cram": ("{PLAIN}secret", f"{to} destuser=alice pass={USERS['alice']}"),
            "nopw": (None, f"{to} nopassword destuser=alice"),
            "down": ("{PLAIN}pass", f"proxy host=127.0.0.1 port={nobodyPort}"),
            **more,
        }
    )


@pytest_twisted.async_yield_fixture
async def front(dovecot, clock):
    """Our server proxying to C{dovecot}, Dovecot's retry policy, on C{clock}."""
    passdb = proxyUsers(dovecot.port, freePort("127.0.0.1"))
    harness = ServerHarness.forPassdbs(
        [passdb], clock=clock, connector=BackendConnector(reactor, clock)
    )
    await harness.start()
    yield harness
    await harness.stop()


@pytest_twisted.async_yield_fixture
async def client(front):
    connection = await front.connect()
    yield connection
    await connection.close()


async def fetchMarker(client) -> list[bytes]:
    """SELECT INBOX and FETCH the marker through the splice."""
    assert (await client.command(b"b SELECT INBOX"))[-1].startswith(b"b OK [READ-WRITE]")
    client.send(b"c FETCH 1 BODY[]\r\n")
    lines = [await client.line() for _ in range(6)]  # the marker has a blank line
    assert lines[0].startswith(b"* 1 FETCH (") and lines[0].endswith(b"BODY[] {38}")
    assert lines[1:4] == [b"Subject: marker-alice", b"", b"hello alice"]
    return lines


def isBackendOK(reply: bytes, tag: bytes = b"a") -> bool:
    """Dovecot's tagged OK with its own capabilities (SORT: not ours)."""
    return reply.startswith(tag + b" OK [CAPABILITY IMAP4rev1 ") and b" SORT " in reply


@pytest.mark.parametrize("mech", MECHS)
@pytest_twisted.ensureDeferred
async def test_eachLoginPathProxiedThenFetchesMarker(client, mech):
    _, login = MECHS[mech]
    user = b"cram" if mech == "CRAM-MD5" else b"alice"
    password = b"secret"
    reply = await login(client, user, password)
    assert isBackendOK(reply), reply
    fetched = await fetchMarker(client)
    assert fetched[-1].startswith(b"c OK Fetch completed")


@pytest_twisted.ensureDeferred
async def test_proxyMaybeToAnotherServerProxies(client):
    assert isBackendOK((await client.command(b"a LOGIN maybe secret"))[-1])


@pytest_twisted.ensureDeferred
async def test_capabilityBeforeLoginGetsUntaggedCapabilityFirst(client):
    await client.command(b"x CAPABILITY")
    untagged, tagged = await client.command(b"a LOGIN alice secret")
    assert untagged.startswith(b"* CAPABILITY IMAP4rev1 ")
    assert b" SORT " in untagged
    assert isBackendOK(tagged)


async def _retried(clock, client, data: bytes, retries: int) -> bytes:
    """Send C{data}; move the clock past each one-second retry; the reply."""
    client.send(data)
    for _ in range(retries):
        for _ in range(400):
            if any(dc.getTime() == clock.seconds() + 1.0 for dc in clock.getDelayedCalls()):
                break
            await task.deferLater(reactor, 0.005, lambda: None)
        clock.advance(1.0)
    return await client.line()


@pytest_twisted.ensureDeferred
async def test_backendNobodyListensOnIsUnavailableAndClientMayTryAgain(client, clock):
    assert await _retried(clock, client, b"a LOGIN down pass\r\n", 3) == b"a " + UNAVAILABLE
    assert isBackendOK((await client.command(b"a LOGIN alice secret"))[-1])


@pytest_twisted.ensureDeferred
async def test_nopasswordWrongPasswordIsBackendRefusalAfterDelay(client, clock):
    reply = await answerAfterDelay(client, clock, b"a LOGIN nopw wrong\r\n", 2.0)
    assert reply == b"a " + FAILED
    assert isBackendOK((await client.command(b"b LOGIN nopw secret"))[-1], b"b")


@pytest_twisted.ensureDeferred
async def test_wrongPasswordNeverReachesTheBackend(clock):
    backend = Listener()
    port = await backend.listen()
    harness = ServerHarness.forPassdbs(
        [proxyUsers(port, port)], clock=clock, connector=BackendConnector(reactor, clock)
    )
    async with harness.serving() as client:
        reply = await answerAfterDelay(client, clock, b"a LOGIN alice wrong\r\n", 2.0)
    await backend.stop()
    assert reply == b"a " + FAILED
    assert backend.accepted.pending == []


@pytest_twisted.ensureDeferred
async def test_pipelinedCommandsReachTheBackendAfterTheLoginInOrder(client):
    client.send(b"a LOGIN alice secret\r\nb SELECT INBOX\r\nc NOOP\r\nd EXAMINE INBOX\r\n")
    assert isBackendOK(await client.line())
    assert (await client.until(b"b"))[-1].startswith(b"b OK [READ-WRITE]")
    assert (await client.until(b"c"))[-1].startswith(b"c OK NOOP completed")
    assert (await client.until(b"d"))[-1].startswith(b"d OK [READ-ONLY]")


@pytest_twisted.ensureDeferred
async def test_proxiedSessionOutlivesThePreLoginTimers(client, clock):
    assert isBackendOK((await client.command(b"a LOGIN alice secret"))[-1])
    clock.advance(301)  # past the pre-login idle timer (60 s) and lifetime (300 s)
    assert (await client.command(b"b NOOP"))[-1].startswith(b"b OK NOOP completed")
    assert clock.getDelayedCalls() == []


async def descriptorsBackTo(count: int, seconds: float = 1.0) -> None:
    """Wait (bounded by C{seconds} of real time) until this process holds C{count} fds."""
    for _ in range(int(seconds / 0.01)):
        if openDescriptors() <= count:
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"{openDescriptors()} descriptors open, expected {count}")


@pytest_twisted.ensureDeferred
async def test_clientThatVanishesMidFetchClosesTheBackend(front):
    baseline = openDescriptors()
    client = await front.connect()
    assert isBackendOK((await client.command(b"a LOGIN bob secret2"))[-1])
    big = b"Subject: big\r\n\r\n" + b"x" * 74 + b"\r\n"
    big = big + (b"y" * 74 + b"\r\n") * 40000
    client.send(b"b APPEND INBOX {%d+}\r\n" % len(big) + big + b"\r\n")
    assert (await client.until(b"b"))[-1].startswith(b"b OK")
    await client.command(b"c SELECT INBOX")
    client.send(b"d FETCH 2 BODY[]\r\n")
    assert (await client.line()).startswith(b"* 2 FETCH")
    client.abort()
    await client.lost
    await descriptorsBackTo(baseline)


@pytest_twisted.ensureDeferred
async def test_backendThatVanishesMidIdleClosesTheClient(front, dovecot):
    baseline = openDescriptors()
    client = await front.connect()
    assert isBackendOK((await client.command(b"a LOGIN alice secret"))[-1])
    await client.command(b"b SELECT INBOX")
    assert await client.command(b"c IDLE") == [b"+ idling"]
    doveadm = shutil.which("doveadm", path=os.environ["PATH"] + ":/usr/bin:/usr/sbin")
    kick = ["-c", str(dovecot.configPath), "kick", "alice"]
    _, err, status = await getProcessOutputAndValue(doveadm, kick, env=os.environ)
    assert status == 0, err
    assert await client.line() == b"* BYE Server shutting down."
    await client.lost.addTimeout(1, reactor)
    await descriptorsBackTo(baseline)


def twistdSession(
    tmp_path, passwdLine: str, commands: bytes, lastTag: bytes, *options: str
) -> tuple[list[bytes], str]:
    """
    Run our twistd plugin on a passwd-file of one line (C{LISTENPORT} in
    it becomes the port it listens on) and C{options},
    send C{commands} and read up to the line tagged C{lastTag}, bounded:
    the lines read and what twistd logged.
    """
    from test_tap import _connectWhenListening, _freePort, _twistd

    passwd = tmp_path / "users.passwd"
    port = _freePort()
    passwdLine = passwdLine.replace("LISTENPORT", str(port))
    passwd.write_text(passwdLine + "\n")
    proc = _twistd(
        "--listen", f"tcp:{port}:interface=127.0.0.1", "--passdb", f"passwd-file:{passwd}",
        *options, cwd=str(tmp_path),
    )  # fmt: skip
    try:
        with _connectWhenListening(proc, port) as sock:
            f = sock.makefile("rb")
            f.readline()
            sock.sendall(commands)
            lines = [f.readline()]
            while not lines[-1].startswith(lastTag + b" ") and len(lines) < 40:
                lines.append(f.readline())
            sock.sendall(b"z LOGOUT\r\n")
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0].decode()
    return lines, out


def test_twistdProxiesToDovecot(tmp_path, dovecot):
    lines, out = twistdSession(
        tmp_path,
        f"alice:{{PLAIN}}secret::::::proxy host=127.0.0.1 port={dovecot.port}",
        b"a LOGIN alice secret\r\nb SELECT INBOX\r\nc FETCH 1 BODY[]\r\n",
        b"c",
        "--proxy-max-reconnects", "1",
    )  # fmt: skip
    assert isBackendOK(lines[0])
    assert b"hello alice\r\n" in lines
    assert "proxy started" in out and "backend=127.0.0.1:" in out
    assert "secret" not in out


@pytest_twisted.async_yield_fixture
async def frontWithLocalBackend(dovecot, clock):
    """Users who log in here go on to C{dovecot} (C{--local-backend})."""
    passdb = MemoryPassdb.fromLines(
        {
            "alice": ("{PLAIN}secret", ""),
            "refalice": ("{PLAIN}secret", "host=imap2.example.com user=alice"),
        }
    )
    local = PassdbReply.fromFields(splitExtraFields(f"host=127.0.0.1 port={dovecot.port}"))
    harness = ServerHarness.forPassdbs(
        [passdb], clock=clock, connector=BackendConnector(reactor, clock), localBackend=local
    )
    await harness.start()
    yield harness
    await harness.stop()


@pytest_twisted.ensureDeferred
async def test_localBackendGivesALocalLoginTheOldServersMailbox(frontWithLocalBackend):
    client = await frontWithLocalBackend.connect()
    assert isBackendOK((await client.command(b"a LOGIN alice secret"))[-1])
    assert (await fetchMarker(client))[-1].startswith(b"c OK Fetch completed")
    await client.close()


@pytest_twisted.ensureDeferred
async def test_localBackendWithReferralSendsCapabilitiesThenReferral(frontWithLocalBackend):
    client = await frontWithLocalBackend.connect()
    capability, tagged = await client.command(b"a LOGIN refalice secret")
    assert capability.startswith(b"* CAPABILITY IMAP4rev1 ") and b" SORT " in capability
    assert tagged == (
        b"a OK [REFERRAL imap://alice;AUTH=PLAIN@imap2.example.com/] "
        b"Logged in, but you should use this server instead."
    )
    assert (await fetchMarker(client))[-1].startswith(b"c OK Fetch completed")
    await client.close()


async def _rawClient(front) -> Peer:
    """A raw byte client on the front, greeting read."""
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", front.port)
    peer = await connectProtocol(endpoint, Peer())
    await peer.waitForBytes(b"\r\n")
    return peer


async def _send(peer: Peer, data: bytes, until: bytes, seconds: float = 30) -> None:
    peer.transport.write(data)
    await peer.waitForBytes(until).addTimeout(seconds, reactor)


@pytest_twisted.ensureDeferred
async def test_twentyMegabytesUpAndDownKeepTheirSHA256(front):
    body = b"".join(b"%07d " % n + b"z" * 68 + b"\r\n" for n in range(20 * 1024 * 1024 // 78))
    big = b"Subject: big\r\n\r\n" + body
    peer = await _rawClient(front)
    await _send(peer, b"a LOGIN bob secret2\r\n", b"a OK")
    await _send(peer, b"b APPEND INBOX {%d+}\r\n" % len(big) + big + b"\r\n", b"b OK")
    uid = re.search(rb"b OK \[APPENDUID \d+ (\d+)\]", bytes(peer.data)).group(1)
    await _send(peer, b"c SELECT INBOX\r\nd UID FETCH " + uid + b" BODY.PEEK[]\r\n", b"d OK")
    data = bytes(peer.data)
    start = data.index(b"BODY[] {%d}\r\n" % len(big)) + len(b"BODY[] {%d}\r\n" % len(big))
    assert hashlib.sha256(data[start : start + len(big)]).digest() == hashlib.sha256(big).digest()
    peer.transport.loseConnection()
    await peer.lost


@pytest_twisted.ensureDeferred
async def test_idleSeesAMessageDeliveredMeanwhile(front, dovecot):
    peer = await _rawClient(front)
    await _send(peer, b"a LOGIN alice secret\r\nb SELECT INBOX\r\nc IDLE\r\n", b"+ idling\r\n")
    seen = len(peer.data)
    new = dovecot.directory / "home" / "alice" / "Maildir" / "new" / "2000000000.M2P2.delivered"
    new.write_bytes(b"Subject: delivered\r\n\r\nwhile idling\r\n")
    arrived = peer.waitUntil(
        lambda: re.search(rb"\* \d+ EXISTS\r\n", peer.data[seen:]) is not None
    )
    await arrived.addTimeout(10, reactor)
    await _send(peer, b"DONE\r\n", b"c OK Idle completed")
    peer.transport.loseConnection()
    await peer.lost


@pytest_twisted.ensureDeferred
async def test_shutdownClosesRelayedSessions(front):
    baseline = openDescriptors()
    client = await front.connect()
    assert isBackendOK((await client.command(b"a LOGIN alice secret"))[-1])
    front.factory.closeRelays()
    await client.lost.addTimeout(1, reactor)
    await descriptorsBackTo(baseline)
    assert front.factory.relays == set()


@pytest_twisted.ensureDeferred
async def test_clientAddressFromATrustedProxyReachesDovecotsLog(client, dovecot):
    """HAProxy-style chain: a trusted peer's ID names the client; Dovecot logs it."""
    forward = b'x ID ("x-originating-ip" "192.0.2.77" "x-originating-port" "40777")'
    assert (await client.command(forward))[-1] == b"x OK ID completed."
    assert isBackendOK((await client.command(b"a LOGIN bob secret2"))[-1])
    for _ in range(200):
        lines = [line for line in dovecot.log().splitlines() if "rip=192.0.2.77" in line]
        if lines:
            break
        await task.deferLater(reactor, 0.01, lambda: None)
    assert lines and "user=<bob>" in lines[0]


@pytest_twisted.ensureDeferred
async def test_sessionIDOfOurLogIsTheOneDovecotLogs(client, dovecot, logged):
    """One id joins the front's lines and the backend's (ID x-session-id)."""
    assert isBackendOK((await client.command(b"a LOGIN bob secret2"))[-1])
    (login,) = [e for e in logged if e.get("event") == "login"]
    (started,) = [e for e in logged if e.get("event") == "proxy started"]
    session = login["session"]
    assert started["session"] == session
    assert login["log_system"].endswith(" " + session)
    for _ in range(200):
        lines = [line for line in dovecot.log().splitlines() if f"session=<{session}>" in line]
        if lines:
            break
        await task.deferLater(reactor, 0.01, lambda: None)
    assert lines and "user=<bob>" in lines[0]


@pytest_twisted.ensureDeferred
async def test_sessionIDFromATrustedProxyIsKept(client, logged):
    """A front before us sent its session id: our lines carry it, as Dovecot's do."""
    forward = b'x ID ("x-originating-ip" "192.0.2.78" "x-session-id" "frontSession01")'
    assert (await client.command(forward))[-1] == b"x OK ID completed."
    assert isBackendOK((await client.command(b"a LOGIN bob secret2"))[-1])
    (login,) = [e for e in logged if e.get("event") == "login"]
    assert (login["session"], login["remote"]) == ("frontSession01", "192.0.2.78")
