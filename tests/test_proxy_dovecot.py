"""
End to end against a real Dovecot backend, first without our server: connect
and log in (C{LOGIN}, C{AUTHENTICATE PLAIN} as a master user), relay, then
C{SELECT}/C{FETCH} the marker message through the relay as raw bytes; ID
forwarding seen in Dovecot's log; STARTTLS and implicit TLS checked
against the test CA; a Dovecot referral followed. Then the same TLS and
master-user logins through our IMAP server, a real client on the front
(the test CA given to the connector, as C{--backend-ca} does).
"""

from __future__ import annotations

import pytest
import pytest_twisted
from dovecotbackend import USERS, marker, startDovecot
from loopback import RelayedClient
from test_proxy_server import fetchMarker as fetchMarkerThroughServer
from test_proxy_server import isBackendOK, twistdSession
from tlscerts import makeCertificate
from twisted.internet import reactor, task

from imapreferral.imap.backend import ForwardedClient
from imapreferral.imap.backendresult import BackendAuthFailed, BackendMisconfigured
from imapreferral.login.outcome import IMPLICIT_TLS, STARTTLS, ProxyDestination
from imapreferral.proxy.connect import BackendConnector, BackendSession, loadTrustRoot
from imapreferral.testing import MemoryPassdb, ServerHarness

FETCH = b"b SELECT INBOX\r\nc FETCH 1 BODY[]\r\nd LOGOUT\r\n"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return makeCertificate(tmp_path_factory.mktemp("dovecot-tls"))


@pytest.fixture(scope="module")
def dovecot(certificate):
    backend = startDovecot(certificate)
    yield backend
    backend.stop()


@pytest.fixture
def connector(certificate, clock):
    return BackendConnector(reactor, clock, trustRoot=loadTrustRoot(str(certificate[0])))


def destination(dovecot, user: str = "alice", **kwargs) -> ProxyDestination:
    fields = {"host": "127.0.0.1", "port": dovecot.port, "user": user, "password": USERS[user]}
    return ProxyDestination(**{**fields, **kwargs})


async def fetchMarker(session: BackendSession, clock) -> bytes:
    """Through a relay: SELECT INBOX, FETCH the marker, LOGOUT."""
    client = await RelayedClient.start(session, clock)
    transcript = await client.command(FETCH, b"d OK")
    await client.close()
    return transcript


async def logLine(dovecot, text: str, attempts: int = 200) -> str:
    """The first Dovecot log line containing C{text}, waiting (bounded)."""
    for _ in range(attempts):
        found = [line for line in dovecot.log().splitlines() if text in line]
        if found:
            return found[0]
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"{text!r} not in Dovecot's log:\n{dovecot.log()}")


@pytest.mark.parametrize("user", ["alice", "carol"], ids=["quoted", "8-bit-literal"])
@pytest_twisted.ensureDeferred
async def test_loginRelayAndFetchMarker(dovecot, connector, clock, user):
    session = await connector.connect(destination(dovecot, user), ForwardedClient())
    assert isinstance(session, BackendSession)
    assert session.result.clientBytes(b"a").startswith(b"a OK [CAPABILITY IMAP4rev1 ")
    transcript = await fetchMarker(session, clock)
    assert b"* 1 EXISTS\r\n" in transcript
    assert marker(user) in transcript
    assert b"c OK Fetch completed" in transcript


@pytest_twisted.ensureDeferred
async def test_masterUserLogin(dovecot, connector, clock):
    master = destination(dovecot, master="admin", password="masterpw")
    session = await connector.connect(master, ForwardedClient())
    assert isinstance(session, BackendSession)
    assert marker("alice") in await fetchMarker(session, clock)
    await logLine(dovecot, "Master user logging in as alice")


@pytest.mark.parametrize(
    "kwargs",
    [{"password": "wrong"}, {"master": "admin", "password": "wrong"}],
    ids=["login", "master"],
)
@pytest_twisted.ensureDeferred
async def test_wrongPasswordIsAuthenticationFailed(dovecot, connector, kwargs):
    result = await connector.connect(destination(dovecot, **kwargs), ForwardedClient())
    assert isinstance(result, BackendAuthFailed)
    assert result.clientBytes(b"a") == b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"


@pytest_twisted.ensureDeferred
async def test_idForwardingSeenInDovecotLog(dovecot, connector, clock):
    """Dovecot trusts loopback (login_trusted_networks) and logs our client."""
    client = ForwardedClient(
        originatingIP="192.0.2.55", originatingPort=40123, sessionID="imapreferralT1"
    )
    session = await connector.connect(destination(dovecot, "bob"), client)
    assert isinstance(session, BackendSession)
    line = await logLine(dovecot, "session=<imapreferralT1>")
    assert "user=<bob>" in line
    assert "rip=192.0.2.55" in line
    await fetchMarker(session, clock)


@pytest_twisted.ensureDeferred
async def test_nopipeliningStillLogsIn(dovecot, connector, clock):
    client = ForwardedClient(originatingIP="192.0.2.56", sessionID="imapreferralT2")
    session = await connector.connect(destination(dovecot, pipelining=False), client)
    assert marker("alice") in await fetchMarker(session, clock)
    assert "rip=192.0.2.56" in await logLine(dovecot, "session=<imapreferralT2>")


@pytest_twisted.ensureDeferred
async def test_dovecotReferralFollowed(dovecot, connector, clock):
    """C{moved} is C{nologin host=127.0.0.2}: Dovecot refers, we follow as alice."""
    session = await connector.connect(destination(dovecot, "moved"), ForwardedClient())
    assert isinstance(session, BackendSession)
    assert (session.destination.host, session.destination.user) == ("127.0.0.2", "alice")
    assert marker("alice") in await fetchMarker(session, clock)


@pytest.mark.parametrize("tls", [STARTTLS, IMPLICIT_TLS])
@pytest_twisted.ensureDeferred
async def test_tlsVerifiedAgainstTestCA(dovecot, connector, clock, tls):
    port = dovecot.tlsPort if tls == IMPLICIT_TLS else dovecot.port
    target = destination(dovecot, host="localhost", hostip="127.0.0.1", port=port, tls=tls)
    session = await connector.connect(target, ForwardedClient(sessionID=f"imapreferral{tls}"))
    assert isinstance(session, BackendSession)
    assert marker("alice") in await fetchMarker(session, clock)
    # Dovecot says the login came over TLS, and ID went inside it.
    assert ", TLS," in await logLine(dovecot, f"session=<imapreferral{tls}>")


@pytest.mark.parametrize(
    ("tls", "state"), [(STARTTLS, "starttls"), (IMPLICIT_TLS, "connect")], ids=["starttls", "ssl"]
)
@pytest_twisted.ensureDeferred
async def test_wrongCertificateNameIsServerBug(dovecot, connector, tls, state):
    port = dovecot.tlsPort if tls == IMPLICIT_TLS else dovecot.port
    target = destination(dovecot, host="wrong.example", hostip="127.0.0.1", port=port, tls=tls)
    result = await connector.connect(target, ForwardedClient())
    assert isinstance(result, BackendMisconfigured)
    assert result.state == state
    assert result.clientBytes(b"a") == b"a NO [SERVERBUG] Account is temporarily unavailable.\r\n"


@pytest.mark.parametrize("tls", [STARTTLS, IMPLICIT_TLS])
@pytest_twisted.ensureDeferred
async def test_anyCertSkipsVerification(dovecot, connector, clock, tls):
    port = dovecot.tlsPort if tls == IMPLICIT_TLS else dovecot.port
    target = destination(
        dovecot, host="wrong.example", hostip="127.0.0.1", port=port, tls=tls,
        verifyCertificate=False,
    )  # fmt: skip
    session = await connector.connect(target, ForwardedClient())
    assert isinstance(session, BackendSession)
    assert marker("alice") in await fetchMarker(session, clock)


# Through our server

SERVERBUG = b"a NO [SERVERBUG] Account is temporarily unavailable."


def tlsUsers(dovecot) -> MemoryPassdb:
    """Front users proxied to C{dovecot}'s alice in each TLS way (password C{secret})."""
    ssl = f"proxy hostip=127.0.0.1 port={dovecot.tlsPort} destuser=alice ssl"
    starttls = f"proxy hostip=127.0.0.1 port={dovecot.port} destuser=alice starttls"
    return MemoryPassdb.fromLines(
        {
            "ssl": ("{PLAIN}secret", f"{ssl}=yes host=localhost"),
            "starttls": ("{PLAIN}secret", f"{starttls}=yes host=localhost"),
            "sslwrong": ("{PLAIN}secret", f"{ssl}=yes host=wrong.example"),
            "starttlswrong": ("{PLAIN}secret", f"{starttls}=yes host=wrong.example"),
            "sslany": ("{PLAIN}secret", f"{ssl}=any-cert host=wrong.example"),
            "starttlsany": ("{PLAIN}secret", f"{starttls}=any-cert host=wrong.example"),
            "master": (
                "{PLAIN}front",
                f"proxy host=127.0.0.1 port={dovecot.port} destuser=alice "
                "master=admin pass=masterpw",
            ),
        }
    )


@pytest_twisted.async_yield_fixture
async def server(dovecot, connector, clock):
    """Our server proxying to C{dovecot}, trusting the test CA (C{--backend-ca})."""
    harness = ServerHarness.forPassdbs([tlsUsers(dovecot)], clock=clock, connector=connector)
    await harness.start()
    yield harness
    await harness.stop()


@pytest.mark.parametrize(
    "user", ["ssl", "starttls", "sslany", "starttlsany"],
    ids=["ssl-verified", "starttls-verified", "ssl-any-cert", "starttls-any-cert"],
)  # fmt: skip
@pytest_twisted.ensureDeferred
async def test_tlsBackendProxiedThroughTheServer(client, user):
    assert isBackendOK((await client.command(b"a LOGIN %s secret" % user.encode()))[-1])
    assert (await fetchMarkerThroughServer(client))[-1].startswith(b"c OK Fetch completed")


@pytest.mark.parametrize("user", ["sslwrong", "starttlswrong"], ids=["ssl", "starttls"])
@pytest_twisted.ensureDeferred
async def test_wrongCertificateNameIsServerBugThroughTheServer(client, user):
    assert await client.command(b"a LOGIN %s secret" % user.encode()) == [SERVERBUG]
    assert isBackendOK((await client.command(b"a LOGIN ssl secret"))[-1])


@pytest_twisted.ensureDeferred
async def test_masterUserLoginThroughTheServerOpensTheDestinationUsersMailbox(client, dovecot):
    masterLogins = dovecot.log().count("Master user logging in as alice")
    assert isBackendOK((await client.command(b"a LOGIN master front"))[-1])
    assert (await fetchMarkerThroughServer(client))[-1].startswith(b"c OK Fetch completed")
    for _ in range(200):  # Dovecot's log process writes a little later
        if dovecot.log().count("Master user logging in as alice") > masterLogins:
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("Dovecot did not log a master-user login")


def test_twistdWithBackendCAProxiesOverVerifiedTLS(tmp_path, dovecot, certificate):
    line = (
        "alice:{PLAIN}secret::::::proxy host=localhost hostip=127.0.0.1 "
        f"port={dovecot.tlsPort} ssl=yes"
    )
    commands = b"a LOGIN alice secret\r\nb SELECT INBOX\r\nc FETCH 1 BODY[]\r\n"
    lines, out = twistdSession(tmp_path, line, commands, b"c", "--backend-ca", str(certificate[0]))
    assert isBackendOK(lines[0]), out
    assert b"hello alice\r\n" in lines
