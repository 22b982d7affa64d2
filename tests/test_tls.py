"""
TLS: STARTTLS and implicit TLS with real clients (imaplib, ssl), the
plaintext-auth policy, and the STARTTLS command-injection fix.
"""

from __future__ import annotations

import imaplib
import ssl

import pytest
import pytest_twisted
from tlscerts import makeCertificate
from twisted.internet.threads import deferToThread

from imapreferral.networks import NetworkList
from imapreferral.testing import ServerHarness
from imapreferral.tls import TLSConfigError, loadTLS

REFNL = "[REFERRAL imap://refnl;AUTH=PLAIN@imap2.example.com/] Try this server instead."
PRIVACY = b"NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure (SSL/TLS) connections."


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return makeCertificate(tmp_path_factory.mktemp("tls"))


def _clientContext() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@pytest_twisted.async_yield_fixture
async def tlsServer(passdb, clock, certificate):
    """Plain listener with STARTTLS; loopback is *not* trusted here."""
    harness = ServerHarness.forPassdbs(
        [passdb],
        clock=clock,
        tlsContext=loadTLS(str(certificate[0]), str(certificate[1])),
        trustedNetworks=NetworkList.fromOption("10.0.0.0/8"),
    )
    await harness.start()
    yield harness
    await harness.stop()


@pytest_twisted.ensureDeferred
async def test_untrustedPlaintextAdvertisesStartTLSAndLoginDisabled(tlsServer):
    client = await tlsServer.connect()
    try:
        assert client.greeting == (
            b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID STARTTLS LOGINDISABLED "
            b"AUTH=CRAM-MD5] imapreferral ready."
        )
    finally:
        await client.close()


@pytest.mark.parametrize(
    "command",
    [b"a LOGIN refnl pass", b"a AUTHENTICATE PLAIN AHJlZm5sAHBhc3M=", b"a AUTHENTICATE LOGIN"],
)
@pytest_twisted.ensureDeferred
async def test_plaintextLoginRefusedWithoutTLS(tlsServer, passdb, command):
    client = await tlsServer.connect()
    try:
        assert await client.command(command) == [b"a " + PRIVACY]
        assert passdb.lookups == []  # no password was checked
    finally:
        await client.close()


def _starttlsLogin(port: int, user: str):
    conn = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    try:
        before = conn.capabilities
        conn.starttls(_clientContext())
        after = conn.capabilities
        try:
            conn.login(user, "pass")
        except imaplib.IMAP4.error as e:
            return before, after, e.args[0]
        return before, after, None
    finally:
        conn.logout()


@pytest_twisted.ensureDeferred
async def test_starttlsThenReferral(tlsServer):
    before, after, error = await deferToThread(_starttlsLogin, tlsServer.port, "refnl")
    assert "STARTTLS" in before and "LOGINDISABLED" in before
    assert "STARTTLS" not in after and "LOGINDISABLED" not in after
    assert "AUTH=PLAIN" in after
    assert error == REFNL.encode()


def _injection(port: int) -> list[bytes]:
    """Pipeline a command behind STARTTLS in the same packet, then go TLS."""
    import socket

    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    f = raw.makefile("rb")
    f.readline()
    raw.sendall(b"a STARTTLS\r\nb CAPABILITY\r\n")
    lines = [f.readline()]
    tls = _clientContext().wrap_socket(raw, server_hostname="localhost")
    tls.sendall(b"c NOOP\r\n")
    tf = tls.makefile("rb")
    lines.append(tf.readline())
    tls.sendall(b"z LOGOUT\r\n")
    lines += [tf.readline(), tf.readline()]
    tls.close()
    return lines


@pytest_twisted.ensureDeferred
async def test_plaintextPipelinedAfterStartTLSIsDropped(tlsServer):
    lines = await deferToThread(_injection, tlsServer.port)
    assert lines == [
        b"a OK Begin TLS negotiation now.\r\n",
        b"c OK NOOP No operation performed\r\n",  # b CAPABILITY never ran
        b"* BYE Logging out\r\n",
        b"z OK Logout completed.\r\n",
    ]


@pytest_twisted.async_yield_fixture
async def implicitTLS(passdb, clock, certificate):
    options = loadTLS(str(certificate[0]), str(certificate[1]))
    harness = ServerHarness.forPassdbs(
        [passdb],
        clock=clock,
        tlsContext=options,
        trustedNetworks=NetworkList.fromOption("10.0.0.0/8"),
        implicitTLS=options,
    )
    await harness.start()
    yield harness
    await harness.stop()


def _implicitTLSSession(port: int):
    conn = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=_clientContext(), timeout=10)
    try:
        caps = conn.capabilities
        try:
            typ = conn._simple_command("STARTTLS")[0]
        except imaplib.IMAP4.error as e:
            typ = str(e)
        try:
            conn.login("refnl", "pass")
        except imaplib.IMAP4.error as e:
            return caps, typ, e.args[0]
        return caps, typ, None
    finally:
        conn.logout()


@pytest_twisted.ensureDeferred
async def test_implicitTLSAllowsPlaintextMechanismsAndRefusesStartTLS(implicitTLS):
    caps, starttls, error = await deferToThread(_implicitTLSSession, implicitTLS.port)
    assert "AUTH=PLAIN" in caps and "STARTTLS" not in caps and "LOGINDISABLED" not in caps
    assert starttls == "STARTTLS command error: BAD [b'TLS is already active.']"  # not a hang
    assert error == REFNL.encode()


@pytest_twisted.ensureDeferred
async def test_starttlsWithoutCertificateIsNo(client):
    assert await client.command(b"a STARTTLS") == [b"a NO TLS support isn't enabled."]


@pytest_twisted.ensureDeferred
async def test_plaintextAlwaysLiftsThePolicy(passdb, clock):
    harness = ServerHarness.forPassdbs(
        [passdb], clock=clock, trustedNetworks=NetworkList(), plaintextAuth="always"
    )
    async with harness.serving() as client:
        assert (await client.command(b"a LOGIN refnl pass"))[-1].startswith(b"a NO [REFERRAL ")


def test_mismatchedKeyIsRefusedInWords(tmp_path):
    """OpenSSL's reason, not the repr of pyOpenSSL's error list."""
    cert, _ = makeCertificate(tmp_path, "one")
    _, otherKey = makeCertificate(tmp_path, "two")
    with pytest.raises(TLSConfigError) as e:
        loadTLS(str(cert), str(otherKey))
    assert str(e.value) == (
        f"{otherKey}: the key does not match the certificate {cert}: key values mismatch"
    )


@pytest.mark.parametrize(
    ("cert", "key", "message"),
    [
        ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", None,
         "bad: not a valid PEM certificate: "),
        (None, "junk", "bad: not a valid unencrypted PEM private key: "),
    ],
    ids=["certificate", "key"],
)  # fmt: skip
def test_unreadablePEMIsRefusedInWords(tmp_path, cert, key, message):
    goodCert, goodKey = makeCertificate(tmp_path)
    bad = tmp_path / "bad"
    bad.write_text(cert or key)
    with pytest.raises(TLSConfigError) as e:
        loadTLS(str(bad if cert else goodCert), str(bad if key else goodKey))
    text = str(e.value)
    assert text.startswith(f"{tmp_path}/{message}")
    assert "[(" not in text and "'" not in text  # OpenSSL's reasons, in words


def test_missingCertificateIsRefused(tmp_path):
    with pytest.raises(TLSConfigError, match="cannot read TLS certificate"):
        loadTLS(str(tmp_path / "nope.crt"), str(tmp_path / "nope.key"))


@pytest_twisted.async_yield_fixture
async def startTLSServer(passdb, clock, certificate):
    """STARTTLS offered, loopback trusted, failures answered at once."""
    harness = ServerHarness.forPassdbs(
        [passdb], clock=clock, failureDelay=0,
        tlsContext=loadTLS(str(certificate[0]), str(certificate[1])),
    )  # fmt: skip
    await harness.start()
    yield harness
    await harness.stop()


def _failuresOverTLS(port: int) -> list[bytes]:
    import socket

    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    f = raw.makefile("rb")
    f.readline()
    raw.sendall(b"a STARTTLS\r\n")
    f.readline()
    tls = _clientContext().wrap_socket(raw, server_hostname="localhost")
    tf = tls.makefile("rb")
    lines = []
    for n in range(5):
        tls.sendall(b"a%d LOGIN plain wrong\r\n" % n)
        lines.append(tf.readline())
    lines += [tf.readline(), tf.readline()]  # the BYE, then the end of the connection
    tls.close()
    return lines


@pytest_twisted.ensureDeferred
async def test_limitsCloseTLSConnectionsToo(startTLSServer):
    lines = await deferToThread(_failuresOverTLS, startTLSServer.port)
    assert lines[4:] == [
        b"a4 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n",
        b"* BYE Too many authentication failures.\r\n",
        b"",
    ]


def _starttlsBehindLogin(port: int) -> list[bytes]:
    import socket

    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    f = raw.makefile("rb")
    f.readline()
    raw.sendall(b"a LOGIN nobody x\r\nb STARTTLS\r\nc CAPABILITY\r\n")
    lines = [f.readline(), f.readline()]
    tls = _clientContext().wrap_socket(raw, server_hostname="localhost")
    tls.sendall(b"d NOOP\r\n")
    lines.append(tls.makefile("rb").readline())
    tls.close()
    return lines


@pytest_twisted.ensureDeferred
async def test_plaintextPipelinedBehindLoginAndStartTLSIsDropped(startTLSServer):
    lines = await deferToThread(_starttlsBehindLogin, startTLSServer.port)
    assert lines == [
        b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n",
        b"b OK Begin TLS negotiation now.\r\n",
        b"d OK NOOP No operation performed\r\n",  # c CAPABILITY never ran
    ]


def _greetingFrom(factory, peer: str) -> bytes:
    """The greeting a connection from C{peer} gets from C{factory}'s server."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    proto = factory.buildProtocol(IPv4Address("TCP", peer, 40000))
    transport = StringTransport(
        hostAddress=IPv4Address("TCP", "127.0.0.1", 143),
        peerAddress=IPv4Address("TCP", peer, 40000),
    )
    proto.makeConnection(transport)
    greeting = transport.value()
    proto.connectionLost(None)
    return greeting


@pytest.mark.parametrize("first", ["10.0.0.7", "192.0.2.7"])
@pytest_twisted.ensureDeferred
async def test_eachKindOfConnectionGetsItsOwnGreetingWhicheverCameFirst(tlsServer, first):
    """The greeting is made once per kind of connection: trusted and untrusted differ."""
    factory = tlsServer.factory
    peers = [first, "192.0.2.7" if first == "10.0.0.7" else "10.0.0.7"]
    greetings = {peer: _greetingFrom(factory, peer) for peer in peers}
    assert b"LOGINDISABLED" in greetings["192.0.2.7"]
    assert b"AUTH=CRAM-MD5]" in greetings["192.0.2.7"]
    assert b"LOGINDISABLED" not in greetings["10.0.0.7"]
    assert b"AUTH=PLAIN AUTH=LOGIN AUTH=CRAM-MD5]" in greetings["10.0.0.7"]
    assert _greetingFrom(factory, "192.0.2.7") == greetings["192.0.2.7"]
