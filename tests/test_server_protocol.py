"""
Protocol behaviour around the login path: capabilities, SASL details,
pipelining, errors, the connection after a referral, delays and clients.
"""

from __future__ import annotations

from base64 import b64encode

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from imapreferral.testing import MemoryPassdb, ServerHarness, answerAfterDelay, waitForDelay

REFNL = b"NO [REFERRAL imap://refnl;AUTH=PLAIN@imap2.example.com/] Try this server instead."
PRELOGIN_CAPS = b"IMAP4rev1 SASL-IR LOGIN-REFERRALS ID AUTH=PLAIN AUTH=LOGIN AUTH=CRAM-MD5"


@pytest_twisted.ensureDeferred
async def test_greetingAdvertisesReferralsAndMechanisms(client):
    assert client.greeting == b"* OK [CAPABILITY " + PRELOGIN_CAPS + b"] imapreferral ready."


@pytest_twisted.ensureDeferred
async def test_preloginCapability(client):
    assert await client.command(b"c CAPABILITY") == [
        b"* CAPABILITY " + PRELOGIN_CAPS,
        b"c OK CAPABILITY completed",
    ]


@pytest_twisted.ensureDeferred
async def test_connectionStaysUsableAfterReferral(client):
    assert await client.command(b"a LOGIN refnl pass") == [b"a " + REFNL]
    assert (await client.command(b"c CAPABILITY"))[0] == b"* CAPABILITY " + PRELOGIN_CAPS
    assert await client.command(b"b LOGIN refnl pass") == [b"b " + REFNL]
    assert await client.command(b"z LOGOUT") == [
        b"* BYE Logging out",
        b"z OK Logout completed.",
    ]
    assert await client.line() == b""


@pytest_twisted.ensureDeferred
async def test_saslIREmptyResponseIsEquals(client):
    """RFC 4959: C{=} is an empty initial response; PLAIN then finds it malformed."""
    assert await client.command(b"a AUTHENTICATE PLAIN =") == [b"a BAD Invalid PLAIN response."]


@pytest_twisted.ensureDeferred
async def test_saslLoginIRIsTheUserName(server, client):
    ir = b64encode(b"refnl")
    assert await client.command(b"a AUTHENTICATE LOGIN " + ir) == [b"+ UGFzc3dvcmQ6"]
    assert await client.command(b64encode(b"pass"), b"a") == [
        b"a NO [REFERRAL imap://refnl;AUTH=LOGIN@imap2.example.com/] Try this server instead."
    ]


@pytest_twisted.ensureDeferred
async def test_starCancelsAuthentication(client):
    assert await client.command(b"a AUTHENTICATE PLAIN") == [b"+ "]
    assert await client.command(b"*", b"a") == [b"a BAD Authentication aborted by client."]
    assert await client.command(b"b LOGIN refnl pass") == [b"b " + REFNL]


@pytest_twisted.ensureDeferred
async def test_badBase64InContinuationIsBad(client):
    assert await client.command(b"a AUTHENTICATE PLAIN") == [b"+ "]
    assert await client.command(b"!!not base64!!", b"a") == [
        b"a BAD Invalid base64 data in continued response."
    ]


@pytest_twisted.ensureDeferred
async def test_badBase64InInitialResponseIsBad(client):
    assert await client.command(b"a AUTHENTICATE PLAIN AHJlZm5sAHBhc3M") == [
        b"a BAD Invalid base64 data in initial response."
    ]


@pytest_twisted.ensureDeferred
async def test_unknownMechanismIsRefused(client):
    assert await client.command(b"a AUTHENTICATE GSSAPI") == [
        b"a NO Unsupported authentication mechanism."
    ]


@pytest_twisted.ensureDeferred
async def test_authenticateWithoutMechanismIsBad(client):
    reply = await client.command(b"a AUTHENTICATE")
    assert reply[-1].startswith(b"a BAD ")


@pytest_twisted.ensureDeferred
async def test_cramMD5RefusesInitialResponse(client):
    assert await client.command(b"a AUTHENTICATE CRAM-MD5 AAAA") == [
        b"a BAD This mechanism does not take an initial response."
    ]


@pytest_twisted.ensureDeferred
async def test_plainAuthzidForAnotherUserIsRefused(client):
    ir = b64encode(b"admin\0refnl\0pass")
    assert await client.command(b"a AUTHENTICATE PLAIN " + ir) == [
        b"a NO [AUTHORIZATIONFAILED] Authorization failed."
    ]


@pytest_twisted.ensureDeferred
async def test_plainAuthzidSameAsUserIsAccepted(client):
    ir = b64encode(b"refnl\0refnl\0pass")
    assert await client.command(b"a AUTHENTICATE PLAIN " + ir) == [b"a " + REFNL]


@pytest_twisted.ensureDeferred
async def test_loginWithLiteralsWorks(client):
    assert await client.command(b"a LOGIN {5}") == [b"+ Ready for 5 octets of text"]
    assert await client.command(b"refnl {4}", b"a") == [b"+ Ready for 4 octets of text"]
    assert await client.command(b"pass", b"a") == [b"a " + REFNL]


@pytest_twisted.ensureDeferred
async def test_pipelinedCommandsWaitForLogin(client, clock):
    """A command sent behind a delayed failing LOGIN is answered after it."""
    client.send(b"a LOGIN refnl wrong\r\nb NOOP\r\n")
    await waitForDelay(clock, 2.0)
    assert client.pending() == 0
    clock.advance(2)
    assert await client.line() == b"a NO [AUTHENTICATIONFAILED] Authentication failed."
    assert await client.line() == b"b OK NOOP No operation performed"


@pytest_twisted.ensureDeferred
async def test_pipelinedCommandsAfterSuccessRunAuthenticated(client):
    client.send(b"a LOGIN plain pass\r\nb SELECT INBOX\r\n")
    assert (await client.line()).startswith(b"a OK [CAPABILITY ")
    assert await client.line() == b"b NO No such mailbox"


@pytest_twisted.ensureDeferred
async def test_otherClientsAreServedDuringFailureDelay(server, clock):
    slow = await server.connect()
    fast = await server.connect()
    try:
        slow.send(b"a LOGIN plain wrong\r\n")
        await waitForDelay(clock, 2.0)
        assert await fast.command(b"a LOGIN refnl pass") == [b"a " + REFNL]
        assert slow.pending() == 0
        clock.advance(2)
        assert await slow.line() == b"a NO [AUTHENTICATIONFAILED] Authentication failed."
    finally:
        await slow.close()
        await fast.close()


@pytest_twisted.ensureDeferred
async def test_nodelayFailureIsAnsweredAtOnce(client, clock):
    assert await client.command(b"a LOGIN refnd wrong") == [
        b"a NO [AUTHENTICATIONFAILED] Authentication failed."
    ]
    assert clock.seconds() == 0


@pytest_twisted.ensureDeferred
async def test_disconnectDuringDelayCancelsIt(server, clock):
    client = await server.connect()
    client.send(b"a LOGIN plain wrong\r\n")
    await waitForDelay(clock, 2.0)
    await client.close()
    for _ in range(100):
        if not any(dc.getTime() == 2.0 for dc in clock.getDelayedCalls()):
            break
        await task.deferLater(reactor, 0.005, lambda: None)
    assert not any(dc.getTime() == 2.0 for dc in clock.getDelayedCalls())


@pytest_twisted.ensureDeferred
async def test_zeroDelayAnswersFailuresAtOnce(passdb, clock):
    async with ServerHarness.forPassdbs([passdb], clock=clock, failureDelay=0).serving() as client:
        assert await client.command(b"a LOGIN plain wrong") == [
            b"a NO [AUTHENTICATIONFAILED] Authentication failed."
        ]


@pytest_twisted.ensureDeferred
async def test_referralAuthStar(passdb, clock):
    async with ServerHarness.forPassdbs(
        [passdb], clock=clock, referralAuth="*"
    ).serving() as client:
        assert await client.command(b"a LOGIN refnl pass") == [
            b"a NO [REFERRAL imap://refnl;AUTH=*@imap2.example.com/] Try this server instead."
        ]


@pytest_twisted.ensureDeferred
async def test_passdbFailureIsTemporaryAndImmediate(passdb, clock):
    harness = await ServerHarness.forPassdbs([passdb], clock=clock).start()
    passdb.error = ConnectionError("database is down")
    client = await harness.connect()
    try:
        assert await client.command(b"a LOGIN refnl pass") == [
            b"a NO [UNAVAILABLE] Temporary authentication failure."
        ]
        passdb.error = None
        assert await client.command(b"b LOGIN refnl pass") == [b"b " + REFNL]
    finally:
        await client.close()
        await harness.stop()


@pytest_twisted.ensureDeferred
async def test_laterPassdbIsConsultedForUnknownUser(clock):
    first = MemoryPassdb.fromLines({"plain": ("pass", "")})
    second = MemoryPassdb.fromLines({"refnl": ("pass", "host=imap2.example.com nologin")})
    async with ServerHarness.forPassdbs([first, second], clock=clock).serving() as client:
        assert await client.command(b"a LOGIN refnl pass") == [b"a " + REFNL]


@pytest_twisted.ensureDeferred
async def test_cramMD5NotAdvertisedWithoutPlaintextPasswords(clock):
    passdb = MemoryPassdb.fromLines({"x": ("{SHA512-CRYPT}$6$abc", "")})
    async with ServerHarness.forPassdbs([passdb], clock=clock).serving() as client:
        assert b"CRAM-MD5" not in client.greeting
        assert await client.command(b"a AUTHENTICATE CRAM-MD5") == [
            b"a NO Unsupported authentication mechanism."
        ]


@pytest_twisted.ensureDeferred
async def test_unknownCommandIsBadNotFatal(client):
    assert await client.command(b"x FROB") == [b"x BAD Unsupported command"]
    assert await client.command(b"a LOGIN refnl pass") == [b"a " + REFNL]


@pytest_twisted.ensureDeferred
async def test_loginWithoutArgumentsIsBad(client):
    assert await client.command(b"a LOGIN") == [
        b"a BAD Illegal syntax: Missing user name and password"
    ]


@pytest_twisted.ensureDeferred
async def test_authenticateWithoutArgumentsIsBad(client):
    assert await client.command(b"a AUTHENTICATE") == [b"a BAD Invalid AUTHENTICATE arguments."]


def test_factoryRefusesUnknownMechanism(passdb):
    from twisted.cred.portal import Portal

    from imapreferral import PassdbChecker, ReferralRealm, ReferralServerFactory

    portal = Portal(ReferralRealm(), [PassdbChecker([passdb])])
    with pytest.raises(ValueError, match="SCRAM-SHA-1"):
        ReferralServerFactory(portal, mechanisms=("PLAIN", "SCRAM-SHA-1"))


@pytest_twisted.ensureDeferred
async def test_failureIsLoggedEvenIfClientLeavesDuringDelay(server, clock):
    from twisted.logger import globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        client = await server.connect()
        client.send(b"a LOGIN plain secretpw\r\n")
        await waitForDelay(clock, 2.0)
        await client.close()
    finally:
        globalLogPublisher.removeObserver(events.append)
    logins = [e for e in events if "summary" in e]
    assert [e["summary"] for e in logins] == [
        f"login remote=127.0.0.1 local=127.0.0.1:{server.port} mech=PLAIN: "
        'authentication failed user="plain"'
    ]
    assert "secretpw" not in repr(events)


def _hashedPassdb():
    import bcrypt

    from imapreferral._cram import cramContext

    blf = "{BLF-CRYPT}" + bcrypt.hashpw(b"pass", bcrypt.gensalt(4)).decode()
    return MemoryPassdb.fromLines(
        {
            "blf": (blf, "host=imap2.example.com nologin"),
            "cram": ("{CRAM-MD5}" + cramContext(b"pass").hex(), "host=imap2.example.com nologin"),
        }
    )


@pytest.mark.parametrize(
    ("user", "password", "ok"), [(b"blf", b"pass", True), (b"blf", b"nope", False)]
)
@pytest_twisted.ensureDeferred
async def test_slowHashThroughTheServer(clock, user, password, ok):
    harness = await ServerHarness.forPassdbs(
        [_hashedPassdb()], clock=clock, failureDelay=0
    ).start()
    client = await harness.connect()
    try:
        reply = await client.command(b"a LOGIN " + user + b" " + password)
        assert reply[0].startswith(b"a NO [REFERRAL ") is ok
    finally:
        await client.close()
        await harness.stop()


@pytest_twisted.ensureDeferred
async def test_cramMD5AgainstDovecotsStoredContext(clock):
    import hashlib
    import hmac
    from base64 import b64decode, b64encode

    async with ServerHarness.forPassdbs([_hashedPassdb()], clock=clock).serving() as client:
        assert b"AUTH=CRAM-MD5" in client.greeting
        (challengeLine,) = await client.command(b"a AUTHENTICATE CRAM-MD5")
        digest = hmac.new(b"pass", b64decode(challengeLine[2:]), hashlib.md5).hexdigest()
        assert await client.command(b64encode(b"cram " + digest.encode()), b"a") == [
            b"a NO [REFERRAL imap://cram;AUTH=CRAM-MD5@imap2.example.com/] Try this server instead."
        ]


@pytest_twisted.ensureDeferred
async def test_literalPipelinedBehindPendingLogin(client, clock):
    assert (
        await answerAfterDelay(
            client, clock, b"a LOGIN nobody x\r\nb LOGIN {5}\r\nrefnl pass\r\n", 2.0
        )
        == b"a NO [AUTHENTICATIONFAILED] Authentication failed."
    )
    assert await client.line() == b"+ Ready for 5 octets of text"
    assert await client.line() == (
        b"b NO [REFERRAL imap://refnl;AUTH=PLAIN@imap2.example.com/] Try this server instead."
    )
    assert await client.command(b"c NOOP") == [b"c OK NOOP No operation performed"]


@pytest.mark.parametrize(
    ("command", "password"),
    [
        (b'a LOGIN "q" "p\\"x"', 'p"x'),
        (b'a LOGIN "q" "pa\\\\ss"', "pa\\ss"),
        (b'a LOGIN "q" ""', ""),
    ],
    ids=["escaped-quote", "escaped-backslash", "empty"],
)
@pytest_twisted.ensureDeferred
async def test_quotedStringEscapes(clock, command, password):
    passdb = MemoryPassdb.fromLines(
        {"q": ("{PLAIN}" + password, "host=imap2.example.com nologin")}
    )
    async with ServerHarness.forPassdbs([passdb], clock=clock).serving() as client:
        assert (await client.command(command))[0].startswith(b"a NO [REFERRAL ")


@pytest_twisted.ensureDeferred
async def test_unmatchedQuoteIsBad(client):
    assert await client.command(b'a LOGIN "refnl pass') == [
        b"a BAD Illegal syntax: Unmatched quotes or bad escape"
    ]


@pytest_twisted.ensureDeferred
async def test_bareLineFeedEndsACommand(client):
    """As Dovecot: C{printf 'a CAPABILITY\\n' | nc} gets its answer, in CRLF lines."""
    client.send(b"c CAPABILITY\n")
    assert await client.until(b"c") == [
        b"* CAPABILITY " + PRELOGIN_CAPS,
        b"c OK CAPABILITY completed",
    ]


@pytest_twisted.ensureDeferred
async def test_bareLineFeedLoginAndLogout(client):
    client.send(b"a LOGIN refnl pass\nz LOGOUT\n")
    assert await client.until(b"a") == [b"a " + REFNL]
    assert await client.until(b"z") == [b"* BYE Logging out", b"z OK Logout completed."]


@pytest_twisted.ensureDeferred
async def test_bareLineFeedAroundALiteral(client):
    client.send(b"a LOGIN {5}\n")
    assert await client.until(b"a") == [b"+ Ready for 5 octets of text"]
    client.send(b"refnl pass\n")
    assert await client.until(b"a") == [b"a " + REFNL]


@pytest_twisted.ensureDeferred
async def test_carriageReturnInsideALineIsKept(client):
    """Only the CR right before the LF belongs to the line end."""
    assert await client.command(b'a LOGIN "ref\rnl" pass') == [
        b"a BAD Illegal syntax: Unmatched quotes or bad escape"
    ]
