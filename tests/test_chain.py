"""L{CheckerChain}: checkers consulted in order, as --passdb and --auth give them."""

from __future__ import annotations

import hmac

import pytest
import pytest_twisted
from twisted.cred.checkers import ICredentialsChecker, InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.logger import formatEvent
from zope.interface import implementer

from imapreferral import AvatarId, LoginContext, LoginReferral, PassdbChecker, StaticPassdb
from imapreferral.login.chain import CheckerChain, canCheckChallenges, canCheckPasswords
from imapreferral.login.credentials import CramMD5Credentials, PasswordCredentials
from imapreferral.login.errors import TemporaryFailure
from imapreferral.testing import MemoryPassdb


def _password(user: bytes, password: bytes) -> PasswordCredentials:
    return PasswordCredentials(user, password, LoginContext())


def _memory(**users: bytes) -> InMemoryUsernamePasswordDatabaseDontUse:
    return InMemoryUsernamePasswordDatabaseDontUse(**users)


def _referring() -> PassdbChecker:
    return PassdbChecker([StaticPassdb.fromString("nopassword host=imap2.example.com nologin")])


def _down() -> PassdbChecker:
    passdb = MemoryPassdb()
    passdb.error = RuntimeError("database down")
    return PassdbChecker([passdb])


@implementer(ICredentialsChecker)
class _Recording:
    """Takes cleartext passwords only; remembers the names it was asked about."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, result: object = None) -> None:
        self.asked: list[bytes] = []
        self.result = result

    def requestAvatarId(self, credentials):  # type: ignore[no-untyped-def]
        self.asked.append(credentials.username)
        if isinstance(self.result, Exception):
            raise self.result
        if isinstance(self.result, Deferred):
            return self.result
        return succeed(credentials.username)


@implementer(ICredentialsChecker)
class _Answering:
    """Takes cleartext passwords; answers every login with C{answer}, counting."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, answer: object) -> None:
        self.answer = answer
        self.asked = 0

    def requestAvatarId(self, credentials):  # type: ignore[no-untyped-def]
        self.asked += 1
        return succeed(self.answer)


async def _outcome(chain: CheckerChain | Deferred[object], credentials: object = None) -> object:
    """What the chain's login (or the Deferred C{chain}) gives: an avatar id or the error."""
    d = chain.requestAvatarId(credentials) if isinstance(chain, CheckerChain) else chain
    try:
        return await d
    except Exception as e:
        return e


@pytest_twisted.ensureDeferred
async def test_aWrongPasswordGoesOnToTheNextChecker():
    chain = CheckerChain([_memory(alice=b"old"), _memory(alice=b"secret")])
    assert await _outcome(chain, _password(b"alice", b"secret")) == b"alice"


@pytest_twisted.ensureDeferred
async def test_noCheckerAcceptingIsAFailedLogin():
    chain = CheckerChain([_memory(alice=b"old"), _memory(bob=b"x")])
    assert type(await _outcome(chain, _password(b"alice", b"secret"))) is UnauthorizedLogin


@pytest_twisted.ensureDeferred
async def test_aReferralDecidesAndLaterCheckersAreNotAsked():
    later = _Recording()
    outcome = await _outcome(CheckerChain([_referring(), later]), _password(b"alice", b"x"))
    assert isinstance(outcome, LoginReferral) and outcome.referral.host == "imap2.example.com"
    assert later.asked == []


@pytest_twisted.ensureDeferred
async def test_aCheckerThatIsDownIsSkippedForALaterOneThatAccepts():
    chain = CheckerChain([_down(), _memory(alice=b"secret")])
    assert await _outcome(chain, _password(b"alice", b"secret")) == b"alice"


@pytest_twisted.ensureDeferred
async def test_aCheckerThatIsDownMakesAFailureTemporary():
    """The password may well be right where the database is: not a wrong password."""
    chain = CheckerChain([_down(), _memory(bob=b"x")])
    assert isinstance(await _outcome(chain, _password(b"alice", b"secret")), TemporaryFailure)


@pytest_twisted.ensureDeferred
async def test_aCheckerThatRaisesIsLoggedAndATemporaryFailure(logged):
    chain = CheckerChain([_Recording(ZeroDivisionError("bug"))])
    outcome = await _outcome(chain, _password(b"alice", b"secret"))
    assert isinstance(outcome, TemporaryFailure) and "ZeroDivisionError" in outcome.why
    (line,) = [formatEvent(e) for e in logged if e.get("event") == "checker failed"]
    assert "_Recording failed: ZeroDivisionError at " in line and "requestAvatarId" in line
    assert "bug" not in line  # the message may quote credentials: not logged


@pytest_twisted.ensureDeferred
async def test_aCheckerFailingTheSameWayIsLoggedOnce(logged):
    chain = CheckerChain([_Recording(ZeroDivisionError("bug"))])
    for _ in range(3):
        await _outcome(chain, _password(b"alice", b"secret"))
    assert len([e for e in logged if e.get("event") == "checker failed"]) == 1


@pytest.mark.parametrize("answer", [None, (), 42, b""], ids=repr)
@pytest_twisted.ensureDeferred
async def test_anAnswerThatIsNotAnAvatarIdIsATemporaryFailure(answer):
    chain = CheckerChain([_Answering(answer)])
    outcome = await _outcome(chain, _password(b"alice", b"secret"))
    assert isinstance(outcome, TemporaryFailure) and "not an avatar id" in outcome.why


@pytest_twisted.ensureDeferred
async def test_anEmptyPasswordNeverReachesAChecker():
    checker = _Answering(b"alice")
    outcome = await _outcome(CheckerChain([checker]), _password(b"alice", b""))
    assert isinstance(outcome, UnauthorizedLogin) and checker.asked == 0


@pytest_twisted.ensureDeferred
async def test_aChallengeResponseSkipsCheckersOfCleartextOnly():
    cleartext = _Recording()
    chain = CheckerChain([cleartext, _memory(alice=b"secret")])

    challenge = b"<1.2@imapreferral>"
    digest = hmac.new(b"secret", challenge, "md5").hexdigest().encode()
    credentials = CramMD5Credentials(b"alice", challenge, digest, LoginContext())
    assert await _outcome(chain, credentials) == b"alice"
    assert cleartext.asked == []


@pytest_twisted.ensureDeferred
async def test_credentialsNoCheckerTakesAreUnhandled():
    credentials = CramMD5Credentials(b"alice", b"<1@x>", b"0" * 32, LoginContext())
    outcome = await _outcome(CheckerChain([_Recording()]), credentials)
    assert isinstance(outcome, UnhandledCredentials)


@pytest.mark.parametrize(
    ("lowercase", "asked"),
    [(True, [b"alice"]), (False, [b"ALICE"])],
    ids=["lower-cased, as Dovecot's %Lu", "--keep-username-case"],
)
@pytest_twisted.ensureDeferred
async def test_everyCheckerSeesTheNormalisedName(lowercase, asked):
    checker = _Recording()
    await CheckerChain([checker], lowercaseUsernames=lowercase).requestAvatarId(
        _password(b" ALICE ", b"x")
    )
    assert checker.asked == asked


@pytest_twisted.ensureDeferred
async def test_cancellingCancelsThePendingCheckAndAsksNoOneElse():
    pending: Deferred[object] = Deferred()
    later = _Recording()
    d = CheckerChain([_Recording(pending), later]).requestAvatarId(_password(b"alice", b"x"))
    d.cancel()
    assert isinstance(await _outcome(d), CancelledError)
    assert pending.called and later.asked == []


def test_passwordsAndChallengesFollowTheCredentialInterfaces():
    assert canCheckPasswords(_Recording()) and not canCheckChallenges(_Recording())
    assert canCheckChallenges(_memory()) and canCheckPasswords(_memory())
    assert not canCheckChallenges(StaticPassdb.fromString("nopassword host=h"))
    assert canCheckChallenges(CheckerChain([_Recording(), _memory()]))


@pytest_twisted.ensureDeferred
async def test_anAvatarIdSuggestingAReferralPassesThrough():
    """A checker's log-in-and-suggest (AvatarId with a referral) reaches the realm as it is."""
    from imapreferral import Referral

    avatar = AvatarId(username="alice", referral=Referral(user="alice", host="imap2"))
    chain = CheckerChain([_memory(), _Recording(succeed(avatar))])
    assert await _outcome(chain, _password(b"alice", b"x")) is avatar
