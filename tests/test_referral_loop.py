"""
A referral to this server is never sent (Alpine would follow it hop after
hop, a password prompt each time): the checker finds it with the same
self-check as C{proxy_maybe} (the address the client connected to, or a
C{--proxy-self}, a name resolved), logs in here and warns naming the
passdb entry. The server-level row is in C{test_refer_or_proxy.py}.
"""

from __future__ import annotations

import attrs
import pytest
import pytest_twisted
from twisted.logger import formatEvent

from imapreferral.login.checker import PassdbChecker
from imapreferral.login.context import LoginContext
from imapreferral.login.credentials import PasswordCredentials
from imapreferral.login.errors import AuthenticationFailed, LoginReferral, TemporaryFailure
from imapreferral.login.outcome import AvatarId, Referral
from imapreferral.testing import MemoryPassdb

#: The client connected to 127.0.0.1:143; the server is also 192.0.2.1:143.
HERE = LoginContext("127.0.0.2", 40000, "127.0.0.1", 143, "PLAIN")
PROXY_SELF = {("192.0.2.1", 143)}


class Resolver:
    """Answers every name with C{addresses}; records what was asked."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = list(addresses)
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int, timeout: float) -> list[str]:
        self.asked.append((host, port))
        return self.addresses


def checker(fields: str, resolver: Resolver | None = None) -> PassdbChecker:
    passdb = MemoryPassdb.fromLines({"moved": ("{PLAIN}pass", fields)})
    return PassdbChecker([passdb], selfAddresses=PROXY_SELF, resolveHost=resolver)


async def check(checker: PassdbChecker, password: bytes = b"pass") -> AvatarId:
    return await checker.requestAvatarId(PasswordCredentials(b"moved", password, HERE))


LOOPS = [
    ("connected-address", "host=127.0.0.1 nologin"),
    ("connected-address-port-143", "host=127.0.0.1 port=143 nologin"),
    ("proxy-self", "host=192.0.2.1 nologin"),
    ("ipv6-mapped-spelling", "host=[::ffff:192.0.2.1] nologin"),
    ("ok-referral", "host=127.0.0.1"),
    ("with-destuser", "host=192.0.2.1 destuser=other nologin"),
]


@pytest.mark.parametrize("fields", [row[1] for row in LOOPS], ids=[row[0] for row in LOOPS])
@pytest_twisted.ensureDeferred
async def test_referralToThisServerLogsInHere(fields):
    assert await check(checker(fields)) == AvatarId(username="moved")


@pytest_twisted.ensureDeferred
async def test_referralByANameThatIsUsLogsInHere():
    resolver = Resolver("192.0.2.1")
    assert await check(checker("host=imap.example.com nologin", resolver)) == AvatarId("moved")
    assert resolver.asked == [("imap.example.com", 143)]


@pytest_twisted.ensureDeferred
async def test_referralToAPortOfNoListenerOfOursLooksNothingUp():
    """Only one of our ports can make a loop: a referral login costs no DNS query."""
    resolver = Resolver("192.0.2.1")
    with pytest.raises(LoginReferral) as raised:
        await check(checker("host=imap.example.com port=1143 nologin", resolver))
    assert raised.value.referral == Referral(user="moved", host="imap.example.com", port=1143)
    assert resolver.asked == []


@pytest_twisted.ensureDeferred
async def test_referralToAnotherServerOnOurPortIsSent():
    with pytest.raises(LoginReferral):
        await check(checker("host=imap.example.com nologin", Resolver("198.51.100.7")))


@pytest_twisted.ensureDeferred
async def test_wrongPasswordIsAFailureAndLooksNothingUp(logged):
    resolver = Resolver("192.0.2.1")
    with pytest.raises(AuthenticationFailed):
        await check(checker("host=imap.example.com nologin", resolver), b"wrong")
    assert resolver.asked == []
    assert not [e for e in logged if "referral loop" in formatEvent(e)]


@pytest_twisted.ensureDeferred
async def test_loopWarningNamesThePassdbAndTheUser(logged):
    loop = checker("host=192.0.2.1 nologin")
    await check(loop)
    (event,) = [e for e in logged if "referral loop" in formatEvent(e)]
    assert event["log_level"].name == "warn"
    assert formatEvent(event) == (
        f"referral loop remote=127.0.0.2: passdb {loop.passdbs[0]!r} refers to this server "
        '(host="192.0.2.1" port=143), logging in here instead user="moved"'
    )


# Review of issue 9: defects found.


@pytest_twisted.ensureDeferred
async def test_nopasswordReferralToThisServerDoesNotLogInWithAnyPassword():
    """
    C{nopassword} on a referral means "the target checks the password".
    When the target is this server nobody checks it: turning the loop into
    a local login must not let any password in.
    """
    passdb = MemoryPassdb.fromLines({"moved": (None, "nopassword host=127.0.0.1 nologin")})
    loop = PassdbChecker([passdb], selfAddresses=PROXY_SELF)
    with pytest.raises((AuthenticationFailed, TemporaryFailure)):
        await check(loop, b"any password at all")


@pytest_twisted.ensureDeferred
async def test_loopWarningCarriesTheSessionId(logged):
    """
    Every log line of a connection carries its session id, so the warning
    can be matched with the login line that follows it.
    """
    here = attrs.evolve(HERE, session="S3ss10nId123")
    await checker("host=192.0.2.1 nologin").requestAvatarId(
        PasswordCredentials(b"moved", b"pass", here)
    )
    (event,) = [e for e in logged if "referral loop" in formatEvent(e)]
    assert event.get("session") == "S3ss10nId123"
