"""
What the log says about clients: the fields we know first, what the client
chose last and quoted, one line per event, values and field counts capped.
"""

from __future__ import annotations

from base64 import b64encode

import attrs
import pytest
import pytest_twisted
from hostile import HOSTILE_NAMES, unquote
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.logger import formatEvent
from zope.interface import implementer

from imapreferral.haproxy import InvalidProxyHeader, parseV1Header
from imapreferral.login.context import LoginContext
from imapreferral.login.credentials import PasswordCredentials
from imapreferral.login.logline import describeOutcome, logAuthentication, plainReferralText
from imapreferral.login.outcome import (
    AuthorizationRefused,
    Disable,
    LoggedIn,
    PrivacyRequired,
    ProxyDestination,
    ProxyLogin,
    Refer,
    Referral,
    Reject,
    Unavailable,
)
from imapreferral.networks import NetworkList
from imapreferral.testing import ServerHarness


def lines(events: list[dict], start: str) -> list[str]:
    """The text of each event that starts with C{start}."""
    return [text for text in map(formatEvent, events) if text.startswith(start)]


V4 = LoginContext("192.0.2.7", 5555, "192.0.2.1", 143, "PLAIN")
V6 = LoginContext("2001:db8::7", 5555, "2001:db8::1", 993, "CRAM-MD5", secured=True)
UNIX = LoginContext(mechanism="LOGIN", socketPath="/run/imap.sock")
REFERRAL = Referral(user="bob", host="imap2.example.com", port=1143)
DESTINATION = ProxyDestination(host="imap2.example.com", port=1143, user="bob", password="pw")

LINE_TABLE = [
    ("failed", Reject(), V4, b"alice",
     'login remote=192.0.2.7 local=192.0.2.1:143 mech=PLAIN: authentication failed user="alice"'),
    ("ipv6", Reject(), V6, b"alice",
     'login remote=2001:db8::7 local=[2001:db8::1]:993 mech=CRAM-MD5: authentication failed '
     'user="alice"'),
    ("unix-socket", Reject(), UNIX, b"alice",
     'login remote=unix:/run/imap.sock local=unix:/run/imap.sock mech=LOGIN: '
     'authentication failed user="alice"'),
    ("referred", Refer(REFERRAL), V4, b"bob",
     'login remote=192.0.2.7 local=192.0.2.1:143 mech=PLAIN client=unknown: referred user="bob" '
     'referral="bob at imap2.example.com:1143"'),
    ("referred-c-client", Refer(REFERRAL), attrs.evolve(V4, client="c-client"), b"bob",
     'login remote=192.0.2.7 local=192.0.2.1:143 mech=PLAIN client=c-client: referred '
     'user="bob" referral="bob at imap2.example.com:1143"'),
    ("proxied-instead", ProxyLogin(DESTINATION, insteadOf=REFERRAL), V4, b"bob",
     'login remote=192.0.2.7 local=192.0.2.1:143 mech=PLAIN client=unknown: '
     'proxied-instead-of-referral user="bob" backend="imap2.example.com:1143" '
     'referral="bob at imap2.example.com:1143"'),
    ("proxying", ProxyLogin(DESTINATION), V4, b"bob",
     'login remote=192.0.2.7 local=192.0.2.1:143 mech=PLAIN: proxying user="bob" '
     'backend="imap2.example.com:1143"'),
    ("logged-in", LoggedIn(None, lambda: None, "alice"), V4, b"alice",
     'login remote=192.0.2.7 local=192.0.2.1:143 mech=PLAIN: logged in user="alice"'),
    ("logged-in-referral", LoggedIn(None, lambda: None, "bob", REFERRAL), V4, b"bob",
     'login remote=192.0.2.7 local=192.0.2.1:143 mech=PLAIN: logged in with referral '
     'user="bob" referral="bob at imap2.example.com:1143"'),
    ("disabled", Disable(), V4, b"carol",
     'login remote=192.0.2.7 local=192.0.2.1:143 mech=PLAIN: login disabled user="carol"'),
    ("unavailable", Unavailable("passdb down:\n\tdetail"), V4, b"alice",
     'login remote=192.0.2.7 local=192.0.2.1:143 mech=PLAIN: temporary failure user="alice" '
     'why="passdb down:\\x0a\\x09detail"'),
    ("unavailable-long-why", Unavailable("x" * 200), V4, b"alice",
     'login remote=192.0.2.7 local=192.0.2.1:143 mech=PLAIN: temporary failure user="alice" '
     'why="' + "x" * 160 + '"[cut from 200 bytes]'),
    ("long-name", Reject(), V4, b"a" * 300,
     'login remote=192.0.2.7 local=192.0.2.1:143 mech=PLAIN: authentication failed '
     'user="' + "a" * 256 + '"[cut from 300 bytes]'),
]  # fmt: skip


@pytest.mark.parametrize(
    ("outcome", "context", "user", "expected"),
    [row[1:] for row in LINE_TABLE],
    ids=[row[0] for row in LINE_TABLE],
)
def test_authenticationLine(logged, outcome, context, user, expected):
    logAuthentication(outcome, PasswordCredentials(user, b"pw", context), plainReferralText)
    (event,) = logged
    assert formatEvent(event) == expected


def test_authenticationEventKeepsTheFieldsApart(logged):
    credentials = PasswordCredentials(b"b\xffob", b"pw", V4)
    logAuthentication(Refer(REFERRAL), credentials, plainReferralText)
    (event,) = logged
    assert {k: event[k] for k in ("user", "remote", "mechanism", "result", "referral")} == {
        "user": "b\ufffdob",
        "remote": "192.0.2.7",
        "mechanism": "PLAIN",
        "result": "referred",
        "referral": "bob at imap2.example.com:1143",
    }


def test_temporaryFailureIsInfoLikeEveryLoginLine(logged):
    """The passdb logs an outage once, as an error; each login is the auth log."""
    logAuthentication(Unavailable("down"), PasswordCredentials(b"a", b"p", V4), plainReferralText)
    (event,) = logged
    assert event["log_level"].name == "info"


@pytest_twisted.async_yield_fixture
async def server(passdb, clock):
    harness = await ServerHarness.forPassdbs([passdb], clock=clock, failureDelay=0).start()
    yield harness
    await harness.stop()


def _assertRealAddressFirst(line: str, prefix: str) -> str:
    """C{line} is one line, starts with C{prefix}; return the rest."""
    assert len(line.splitlines()) == 1 and "\n" not in line
    assert line.startswith(prefix), line
    assert line.index("remote=") == prefix.index("remote=")
    return line[len(prefix) :]


@pytest.mark.parametrize("name", HOSTILE_NAMES.values(), ids=HOSTILE_NAMES.keys())
@pytest_twisted.ensureDeferred
async def test_hostileUserNameComesLastAndQuoted(server, client, logged, name):
    assert (await client.command(b"a LOGIN {%d}" % len(name)))[0].startswith(b"+ ")
    assert await client.command(name + b' "wrong"', b"a") == [
        b"a NO [AUTHENTICATIONFAILED] Authentication failed."
    ]
    (line,) = lines(logged, "login ")
    prefix = f"login remote=127.0.0.1 local=127.0.0.1:{server.port} mech=PLAIN: "
    rest = _assertRealAddressFirst(line, prefix + "authentication failed user=")
    text = name.decode("utf-8", "surrogateescape")
    if len(name) <= 256:
        assert unquote(rest) == text
    else:
        assert rest.endswith(f'"[cut from {len(name)} bytes]')
        assert unquote(rest[: rest.rindex('"') + 1]) == text[:256]


@pytest_twisted.ensureDeferred
async def test_authorizationRefusedLineQuotesBothNames(server, client, logged):
    name = HOSTILE_NAMES["newline-forged-line"]
    response = b64encode(b'other" remote=6.6.6.6\0' + name + b"\0pw")
    assert await client.command(b"a AUTHENTICATE PLAIN " + response) == [
        b"a NO [AUTHORIZATIONFAILED] Authorization failed."
    ]
    (line,) = lines(logged, "login ")
    prefix = f"login remote=127.0.0.1 local=127.0.0.1:{server.port} mech=PLAIN: "
    rest = _assertRealAddressFirst(line, prefix + "authorization refused user=")
    user, authzid = rest.split(" authzid=")
    assert unquote(user) == name.decode() and unquote(authzid) == 'other" remote=6.6.6.6'


@pytest_twisted.ensureDeferred
async def test_idValuesAreQuotedAndCut(server, client, logged):
    value = b'x\\" remote=6.6.6.6 \x01' + b"v" * 100  # x" remote=6.6.6.6 ^A vvv...
    reply = await client.command(b'a ID ("name" "' + value + b'" "version" "1")')
    assert reply[-1] == b"a OK ID completed."
    (line,) = lines(logged, "client ID ")
    prefix = f"client ID remote=127.0.0.1 local=127.0.0.1:{server.port}: "
    rest = _assertRealAddressFirst(line, prefix + '"name"=')
    assert rest == '"x\\" remote=6.6.6.6 \\x01' + "v" * 45 + '"[cut from 119 bytes] "version"="1"'


@pytest_twisted.ensureDeferred
async def test_idFieldsAreCappedInNumber(server, client, logged):
    pairs = b" ".join(b'"f%d" "v"' % i for i in range(30))
    assert (await client.command(b"a ID (" + pairs + b")"))[-1] == b"a OK ID completed."
    (line,) = lines(logged, "client ID ")
    logged = " ".join(f'"f{i}"="v"' for i in range(12))
    assert line.endswith(f": {logged} [cut from 30 fields]")


def _untrusted(passdb, clock, **args) -> ServerHarness:
    return ServerHarness.forPassdbs([passdb], clock=clock, trustedNetworks=NetworkList(), **args)


@pytest_twisted.ensureDeferred
async def test_plaintextRefusalLine(passdb, clock, logged):
    harness = _untrusted(passdb, clock)
    async with harness.serving() as client:
        await client.command(b'a LOGIN "x remote=6.6.6.6" pw')
    assert lines(logged, "login ") == [
        f"login remote=127.0.0.1 local=127.0.0.1:{harness.port} mech=PLAIN: "
        "plaintext authentication refused without TLS"
    ]


@pytest_twisted.ensureDeferred
async def test_refusedConnectionLine(passdb, clock, logged):
    harness = _untrusted(passdb, clock, maxConnectionsPerAddress=1)
    async with harness.serving():
        second = await harness.connect()
        assert second.greeting.startswith(b"* BYE [UNAVAILABLE] ")
        await second.close()
    assert lines(logged, "refused ") == [
        f"refused connection remote=127.0.0.1 local=127.0.0.1:{harness.port}: "
        "Maximum number of connections from your address reached."
    ]


@pytest_twisted.ensureDeferred
async def test_refusedConnectionsOfOneAddressAreOneLineAMinute(passdb, clock, logged):
    harness = _untrusted(
        passdb, clock, maxConnectionsPerAddress=1, preauthIdle=3600, preauthLifetime=3600
    )
    async with harness.serving():
        for _ in range(20):
            refused = await harness.connect()
            await refused.close()
        clock.advance(60)
        refused = await harness.connect()
        await refused.close()
    assert lines(logged, "refused ") == [
        f"refused connection remote=127.0.0.1 local=127.0.0.1:{harness.port}: "
        "Maximum number of connections from your address reached.",
        f"refused connection remote=127.0.0.1 local=127.0.0.1:{harness.port}: "
        "Maximum number of connections from your address reached. "
        "(19 more refused since the last line)",
    ]


@pytest_twisted.ensureDeferred
async def test_unixSocketClientIsLoggedByTheSocketPath(passdb, clock, logged, tmp_path):
    path = str(tmp_path / "imap.sock")
    harness = ServerHarness.forPassdbs(
        [passdb], clock=clock, failureDelay=0, unixSocket=path, plaintextAuth="always"
    )
    async with harness.serving() as client:
        await client.command(b'a ID ("name" "mutt")')
        await client.command(b"b LOGIN refnl wrong")
    assert lines(logged, "client ID ") + lines(logged, "login ") == [
        f'client ID remote=unix:{path} local=unix:{path}: "name"="mutt"',
        f"login remote=unix:{path} local=unix:{path} mech=PLAIN: authentication failed "
        'user="refnl"',
    ]


def test_badProxyHeaderValueIsQuoted():
    with pytest.raises(InvalidProxyHeader) as e:
        parseV1Header(b"PROXY TCP4 1.2.3.4 5.6.7.8 80\x0a\x1b 143")
    assert str(e.value) == 'bad port "80\\x0a\\x1b"'


@pytest.mark.parametrize(
    ("outcome", "result"),
    [
        (PrivacyRequired(), "plaintext authentication refused without TLS"),
        (AuthorizationRefused("alice", "bob"), "authorization refused"),
        (Reject(), "authentication failed"),
        (Unavailable("db down"), "temporary failure"),
    ],
    ids=["privacyRequired", "authorizationRefused", "reject", "unavailable"],
)
def test_describeOutcomeNamesEveryRefusal(outcome, result):
    assert describeOutcome(outcome) == result


# Review of issue 12


@implementer(ICredentialsChecker)
class _BuggyChecker:
    """A checker with a bug: it raises what no checker should."""

    credentialInterfaces = (IUsernamePassword,)

    def requestAvatarId(self, credentials: object) -> object:
        raise RuntimeError("a bug in a checker")


@pytest_twisted.ensureDeferred
async def test_anUnexpectedErrorsLogLineCarriesTheSessionID(logged):
    """
    An error's traceback is a line of the connection too: it must carry
    the session id of the login it broke (as the login line does), or
    `grep SESSION` finds the temporary failure but not why.
    """
    harness = await ServerHarness.forChecker(_BuggyChecker()).start()
    try:
        client = await harness.connect()
        (reply,) = await client.command(b"a LOGIN bob pw")
        assert reply.startswith(b"a NO [UNAVAILABLE]")
        await client.close()
    finally:
        await harness.stop()
    (login,) = [event for event in logged if event.get("event") == "login"]
    failures = [
        event
        for event in logged
        if event.get("log_failure") is not None or event.get("event") == "checker failed"
    ]
    assert failures, "the bug is not logged at all"
    assert all(event.get("session") == login["session"] for event in failures), failures
