"""
Refer or proxy, per client, on a loopback server in front of a real
Dovecot: the mode x client x reply table byte for byte (c-client's
one-prompt C{BYE} form, referrals, proxying instead, C{OK [REFERRAL]}
users logged in here), Python's imaplib in C{auto} and C{refer} mode, and
a referral to ourselves logged in here with a warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import imaplib
from base64 import b64decode, b64encode
from collections.abc import AsyncIterator

import pytest
import pytest_twisted
from dovecotbackend import startDovecot
from test_proxy_server import fetchMarker, isBackendOK
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent

from imapreferral.login.fields import PassdbReply, splitExtraFields
from imapreferral.proxy.connect import BackendConnector
from imapreferral.testing import (
    MemoryPassdb,
    ServerHarness,
    TranscriptClient,
    answerAfterDelay,
)

REFER_TEXT = b"Try this server instead."
SUGGEST_TEXT = b"Logged in, but you should use this server instead."


@pytest.fixture(scope="module")
def dovecot():
    backend = startDovecot()
    yield backend
    backend.stop()


def frontUsers(dovecotPort: int) -> MemoryPassdb:
    """Front users referred to the Dovecot on C{dovecotPort} (alice's mailbox)."""
    to = f"host=127.0.0.1 port={dovecotPort}"
    return MemoryPassdb.fromLines(
        {
            "alice": ("{PLAIN}secret", f"{to} nologin"),
            "renamed": ("{PLAIN}secret", f"{to} destuser=alice nologin"),
            "okref": ("{PLAIN}secret", to),
            "local": ("{PLAIN}pass", ""),
        }
    )


@contextlib.asynccontextmanager
async def serving(dovecot, clock, mode: str) -> AsyncIterator[tuple[ServerHarness, MemoryPassdb]]:
    """
    Our server in C{mode} in front of C{dovecot}; C{loop} is referred to
    the server itself (its port is known once it listens).
    """
    passdb = frontUsers(dovecot.port)
    harness = ServerHarness.forPassdbs(
        [passdb], clock=clock, referralMode=mode, connector=BackendConnector(reactor, clock)
    )
    await harness.start()
    passdb.users["loop"] = PassdbReply.fromFields(
        splitExtraFields(f"host=127.0.0.1 port={harness.port} nologin"), password="{PLAIN}pass"
    )
    try:
        yield harness, passdb
    finally:
        await harness.stop()


@contextlib.asynccontextmanager
async def session(dovecot, clock, mode: str) -> AsyncIterator[TranscriptClient]:
    async with serving(dovecot, clock, mode) as (harness, _):
        client = await harness.connect()
        try:
            yield client
        finally:
            await client.close()


def plainIR(user: bytes, password: bytes) -> bytes:
    return b64encode(b"\0" + user + b"\0" + password)


# How each kind of client logs in: (the lines it sends, the login's tag).
CLIENTS = {
    # Alpine's first command after the greeting (measured: 00000000
    # AUTHENTICATE; with SASL-IR the credentials come along).
    "c-client-authenticate": ([b"00000000 AUTHENTICATE PLAIN %(ir)s"], b"00000000"),
    "c-client-login": ([b"00000000 LOGIN %(user)s %(password)s"], b"00000000"),
    # imaplib's tags: four letters and a counter.
    "other-authenticate": ([b"KDOE1 AUTHENTICATE PLAIN %(ir)s"], b"KDOE1"),
    "other-login": ([b"KDOE1 LOGIN %(user)s %(password)s"], b"KDOE1"),
    "alpine-by-id-login": (
        [b'a ID ("name" "Alpine" "version" "2.26")', b"b LOGIN %(user)s %(password)s"],
        b"b",
    ),
}


async def login(client: TranscriptClient, kind: str, user: bytes, password: bytes) -> list[bytes]:
    """Log in as client C{kind}; every line up to the tagged reply."""
    lines, tag = CLIENTS[kind]
    values = {b"ir": plainIR(user, password), b"user": user, b"password": password}
    for line in lines[:-1]:
        sent = line % values
        await client.command(sent)
    return await client.command(lines[-1] % values, tag)


def referralLine(dovecot, user: bytes, text: bytes, mech: bytes = b"PLAIN") -> bytes:
    url = b"imap://%s;AUTH=%s@127.0.0.1:%d/" % (user, mech, dovecot.port)
    return b"[REFERRAL " + url + b"] " + text


# mode, client, what it gets for a host + nologin user.
TABLE = [
    ("refer", "c-client-authenticate", "bye"),
    ("refer", "c-client-login", "no"),
    ("refer", "other-authenticate", "no"),
    ("refer", "other-login", "no"),
    ("refer", "alpine-by-id-login", "no"),
    ("auto", "c-client-authenticate", "bye"),
    ("auto", "c-client-login", "no"),
    ("auto", "other-authenticate", "proxied"),
    ("auto", "other-login", "proxied"),
    ("auto", "alpine-by-id-login", "no"),
    ("proxy", "c-client-authenticate", "proxied"),
    ("proxy", "c-client-login", "proxied"),
    ("proxy", "other-authenticate", "proxied"),
    ("proxy", "other-login", "proxied"),
    ("proxy", "alpine-by-id-login", "proxied"),
]


@pytest.mark.parametrize(
    ("mode", "kind", "gets"), TABLE, ids=[f"{m}-{k}-{g}" for m, k, g in TABLE]
)
@pytest_twisted.ensureDeferred
async def test_referralUser(dovecot, clock, mode, kind, gets):
    async with session(dovecot, clock, mode) as client:
        lines = await login(client, kind, b"alice", b"secret")
        tag = CLIENTS[kind][1]
        no = tag + b" NO " + referralLine(dovecot, b"alice", REFER_TEXT)
        if gets == "bye":
            lines.append(await client.line())
            assert lines == [b"* BYE " + referralLine(dovecot, b"alice", REFER_TEXT), no, b""]
        elif gets == "no":
            assert lines == [no]
            # The connection stays: the client may log in as someone else.
            assert await client.command(b"z LOGOUT") == [
                b"* BYE Logging out",
                b"z OK Logout completed.",
            ]
        else:
            assert len(lines) == 1 and isBackendOK(lines[0], tag), lines
            assert lines[0].endswith(b"] Logged in")
            await fetchMarker(client)


@pytest_twisted.ensureDeferred
async def test_cClientWithAWrongPasswordGetsNoBye(dovecot, clock):
    """Only a referral comes as the BYE form; a failure is a failure."""
    async with session(dovecot, clock, "refer") as client:
        sent = b"00000000 AUTHENTICATE PLAIN " + plainIR(b"alice", b"wrong") + b"\r\n"
        reply = await answerAfterDelay(client, clock, sent, 2.0)
        assert reply == b"00000000 NO [AUTHENTICATIONFAILED] Authentication failed."
        assert (await client.command(b"00000001 NOOP")) == [
            b"00000001 OK NOOP No operation performed"
        ]


@pytest.mark.parametrize("mode", ["refer", "auto", "proxy"])
@pytest.mark.parametrize("kind", ["c-client-authenticate", "other-login"])
@pytest_twisted.ensureDeferred
async def test_okReferralUserLogsInHereInEveryMode(dovecot, clock, mode, kind):
    async with session(dovecot, clock, mode) as client:
        lines = await login(client, kind, b"okref", b"secret")
        tag = CLIENTS[kind][1]
        assert lines == [tag + b" OK " + referralLine(dovecot, b"okref", SUGGEST_TEXT)]
        # Logged in here: our own (empty) account, not Dovecot's mailbox.
        assert (await client.command(b'z LIST "" "*"'))[-1] == b"z OK LIST completed"


@pytest.mark.parametrize("mode", ["auto", "proxy"])
@pytest_twisted.ensureDeferred
async def test_proxiedInsteadUsesDestuserAndTheClientsPassword(dovecot, clock, mode):
    async with session(dovecot, clock, mode) as client:
        (reply,) = await client.command(b"a LOGIN renamed secret")
        assert isBackendOK(reply)
        await fetchMarker(client)  # alice's marker: destuser=alice


@pytest_twisted.ensureDeferred
async def test_cramMD5ThatCannotBeProxiedIsATemporaryFailureNotAReferral(dovecot, clock):
    """
    CRAM-MD5 carries no password to log in to the backend with: in proxy
    mode nobody is referred (the target may be an internal host), and
    c-client goes on to PLAIN after the NO.
    """
    async with session(dovecot, clock, "proxy") as client:
        reply = await cramMD5Login(client, b"alice", b"secret")
    assert reply == b"a NO [UNAVAILABLE] Temporary authentication failure."


def logLines(events: list[dict], word: str) -> list[str]:
    return [text for text in map(formatEvent, events) if word in text]


@pytest_twisted.ensureDeferred
async def test_logSaysProxiedInsteadOfReferralAndWhichClient(dovecot, clock, logged):
    async with session(dovecot, clock, "auto") as client:
        assert isBackendOK((await client.command(b"a LOGIN alice secret"))[0])
    (line,) = logLines(logged, "proxied-instead-of-referral")
    assert 'mech=PLAIN client=unknown: proxied-instead-of-referral user="alice" ' in line
    assert f'backend="127.0.0.1:{dovecot.port}"' in line


@pytest_twisted.ensureDeferred
async def test_logSaysReferredAndThatTheClientIsCClient(dovecot, clock, logged):
    async with session(dovecot, clock, "auto") as client:
        await login(client, "c-client-authenticate", b"alice", b"secret")
        assert await client.line() == b""
    (line,) = logLines(logged, ": referred ")
    assert 'mech=PLAIN client=c-client: referred user="alice" referral=' in line


@pytest.mark.parametrize("mode", ["refer", "auto", "proxy"])
@pytest_twisted.ensureDeferred
async def test_referralToOurselvesLogsInHereWithAWarning(dovecot, clock, logged, mode):
    async with serving(dovecot, clock, mode) as (harness, passdb):
        local = await harness.connect()
        looped = await harness.connect()
        try:
            expected = await local.command(b"a LOGIN local pass")
            assert await looped.command(b"a LOGIN loop pass") == expected
            assert expected[-1].startswith(b"a OK [CAPABILITY IMAP4rev1 ")
        finally:
            await local.close()
            await looped.close()
    (warning,) = logLines(logged, "referral loop")
    assert f"passdb {passdb!r} refers to this server" in warning
    assert f'(host="127.0.0.1" port={harness.port})' in warning
    assert warning.endswith('user="loop"')
    assert logLines(logged, 'logged in user="loop"')


def _imaplibSession(port: int) -> tuple[object, object]:
    """Log in as alice with imaplib and fetch message 1; what login and fetch gave."""
    conn = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    try:
        try:
            result = conn.login("alice", "secret")
        except imaplib.IMAP4.error as e:
            return e, conn.response("REFERRAL")
        conn.select("INBOX")
        return result, conn.fetch("1", "(BODY[])")
    finally:
        conn.logout()


@pytest_twisted.ensureDeferred
async def test_imaplibInAutoModeIsProxiedAndReadsItsMarker(dovecot, clock):
    async with serving(dovecot, clock, "auto") as (harness, _):
        result, fetched = await deferToThread(_imaplibSession, harness.port)
    status, (text,) = result
    assert status == "OK" and b" SORT " in text and text.endswith(b"] Logged in")  # Dovecot's
    status, data = fetched
    assert status == "OK"
    assert data[0][1] == b"Subject: marker-alice\r\n\r\nhello alice\r\n"


@pytest_twisted.ensureDeferred
async def test_imaplibInReferModeGetsTheReferral(dovecot, clock):
    async with serving(dovecot, clock, "refer") as (harness, _):
        error, referral = await deferToThread(_imaplibSession, harness.port)
    assert isinstance(error, imaplib.IMAP4.error)
    assert error.args[0] == referralLine(dovecot, b"alice", REFER_TEXT)
    url = b"imap://alice;AUTH=PLAIN@127.0.0.1:%d/" % dovecot.port
    assert referral == ("REFERRAL", [url])


# Review of issue 9: defects found.


@pytest.mark.parametrize("mode", ["refer", "auto", "proxy"])
@pytest_twisted.ensureDeferred
async def test_nopasswordReferralToOurselvesRefusesAWrongPassword(clock, mode):
    """
    A C{nopassword} referral leaves the password to the target; when the
    target is this server, logging in here must not skip the check
    altogether (without C{--local-backend} nobody checks it).
    """
    passdb = MemoryPassdb.fromLines({})
    harness = ServerHarness.forPassdbs([passdb], clock=clock, referralMode=mode, failureDelay=0)
    await harness.start()
    passdb.users["anyone"] = PassdbReply.fromFields(
        splitExtraFields(f"nopassword host=127.0.0.1 port={harness.port} nologin")
    )
    try:
        client = await harness.connect()
        try:
            (reply,) = await client.command(b"a LOGIN anyone not-the-password")
        finally:
            await client.close()
    finally:
        await harness.stop()
    assert reply.startswith(b"a NO "), reply


async def cramMD5Login(client: TranscriptClient, user: bytes, password: bytes) -> bytes:
    """Log in with AUTHENTICATE CRAM-MD5 (imaplib-style tag); the tagged reply."""
    (challengeLine,) = await client.command(b"a AUTHENTICATE CRAM-MD5")
    digest = hmac.new(password, b64decode(challengeLine[2:]), hashlib.md5).hexdigest()
    (reply,) = await client.command(b64encode(user + b" " + digest.encode()), b"a")
    return reply


@pytest_twisted.ensureDeferred
async def test_proxyModeNeverAnswersAReferralToAClientThatCannotFollowIt(dovecot, clock):
    """
    C{--referral-mode proxy} is "nobody gets the referral" (its --help, the
    README table's proxy column): it is what an admin picks when clients
    cannot use the target (an internal host) or do not follow referrals.
    With the default mechanisms CRAM-MD5 is offered (the passdb holds
    plaintext); a client set to it (Thunderbird's "encrypted password")
    must not be stranded at "Try this server instead." with the internal
    host in the URL. Either CRAM-MD5 is not offered in this mode or its
    login is not answered with a referral.
    """
    async with session(dovecot, clock, "proxy") as client:
        (capability, _) = await client.command(b"c CAPABILITY")
        if b"AUTH=CRAM-MD5" not in capability:
            return
        reply = await cramMD5Login(client, b"alice", b"secret")
    assert b"[REFERRAL " not in reply, reply


@pytest_twisted.ensureDeferred
async def test_logSaysWhyAnUnknownClientsCramMD5LoginWasNotProxiedInAutoMode(
    dovecot, clock, logged
):
    """
    In C{auto} mode an unknown client is proxied; a CRAM-MD5 login brings
    no password to proxy with, so it is a temporary failure, and the login
    line says why (not a bare "referred client=unknown").
    """
    async with session(dovecot, clock, "auto") as client:
        reply = await cramMD5Login(client, b"alice", b"secret")
        assert reply.startswith(b"a NO [UNAVAILABLE]")
    (event,) = [e for e in logged if e.get("event") == "login"]
    assert event["result"] == "temporary failure"
    assert "the mechanism carried no password" in event["why"], formatEvent(event)


@pytest_twisted.ensureDeferred
async def test_recognitionKeepsNoLongTagsBeforeLogin(clock):
    """
    Before issue 9 a pre-login connection held at most one command line;
    now the first 16 tags are kept whole, and a tag may be as long as a
    line (16 KiB): 256 KiB per connection for the pre-login lifetime, or
    512 MiB over --max-connections. Recognition needs eight bytes a tag.
    """
    harness = ServerHarness.forPassdbs([MemoryPassdb.fromLines({})], clock=clock)
    await harness.start()
    try:
        client = await harness.connect()
        try:
            tag = b"x" * 16000
            for _ in range(16):
                assert (await client.command(tag + b" NOOP", tag))[-1].startswith(tag + b" OK")
            (server,) = [wrapper.wrappedProtocol for wrapper in harness._tracking.closed]
            kept = sum(map(len, server._tags))
            assert kept < 4096, kept
        finally:
            await client.close()
    finally:
        await harness.stop()
