"""
The login core answers at once when nothing waits
(L{imapreferral.login.immediate}), and through a Deferred when something
does, with the same outcome either way.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.cred.checkers import ICredentialsChecker, InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.cred.portal import IRealm, Portal
from twisted.internet import task
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.mail.imap4 import IAccount
from zope.interface import implementer

from imapreferral.imap.account import ReferralRealm
from imapreferral.login.attempt import LoginAttempts
from imapreferral.login.chain import CheckerChain
from imapreferral.login.checker import PassdbChecker
from imapreferral.login.context import LoginContext
from imapreferral.login.credentials import PasswordCredentials
from imapreferral.login.immediate import isWaiting, loginNow, runNow
from imapreferral.login.outcome import LoggedIn, Refer, Reject
from imapreferral.passdbs.static import StaticPassdb
from imapreferral.testing import MemoryPassdb


def _credentials(user: bytes = b"alice", password: bytes = b"secret") -> PasswordCredentials:
    return PasswordCredentials(user, password, LoginContext(remoteIP="192.0.2.7"))


def _attempts(checker: object, clock: task.Clock, delay: float = 2.0) -> LoginAttempts:
    return LoginAttempts(Portal(ReferralRealm(), [checker]), IAccount, clock, delay)


async def _finishes(value: int) -> int:
    return await succeed(value)


async def _raises() -> int:
    await succeed(None)
    raise ValueError("at once")


def test_aCoroutineThatNeverWaitsGivesItsValue():
    assert runNow(_finishes(7)) == 7


def test_aCoroutineThatNeverWaitsRaisesItsError():
    with pytest.raises(ValueError, match="at once"):
        runNow(_raises())


def test_aCoroutineThatWaitsGivesADeferredOfTheRest():
    later: Deferred[int] = Deferred()

    async def waits() -> int:
        return (await later) + 1

    result = runNow(waits())
    assert isWaiting(result)
    got = []
    result.addCallback(got.append)
    later.callback(41)
    assert got == [42]


def test_cancellingTheRestCancelsWhatItWaitsFor():
    cancelled = []
    later: Deferred[int] = Deferred(lambda d: cancelled.append(True))

    async def waits() -> int:
        return await later

    result = runNow(waits())
    result.addErrback(lambda f: f.trap(CancelledError))
    result.cancel()
    assert cancelled == [True]


def test_aReferralFromAPassdbInMemoryIsAnOutcomeNotADeferred():
    checker = PassdbChecker([StaticPassdb.fromString("nopassword host=imap2.example.com nologin")])
    outcome = _attempts(checker, task.Clock()).attemptNow(_credentials(), "alice")
    assert isinstance(outcome, Refer)
    assert outcome.referral.host == "imap2.example.com"


def test_aRightPasswordThroughAChainIsLoggedInAtOnce():
    passdb = MemoryPassdb.fromLines({"alice": ("{PLAIN}secret", "")})
    chain = CheckerChain([PassdbChecker([passdb])])
    outcome = _attempts(chain, task.Clock()).attemptNow(_credentials(), "alice")
    assert isinstance(outcome, LoggedIn)


def test_aDelayedFailureStillWaitsOnTheClock():
    clock = task.Clock()
    passdb = MemoryPassdb.fromLines({"alice": ("{PLAIN}secret", "")})
    # A known user, a wrong password is what the failure delay is for.
    result = _attempts(PassdbChecker([passdb]), clock).attemptNow(
        _credentials(password=b"guess"), "alice"
    )
    assert isWaiting(result)
    got = []
    result.addCallback(got.append)
    clock.advance(1.9)
    assert got == []
    clock.advance(0.2)
    assert got == [Reject()]


def test_aCheckerWithoutAnImmediateAnswerIsAskedTheTwistedWay():
    checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret")
    result = loginNow(Portal(ReferralRealm(), [checker]), _credentials(), IAccount)
    assert isWaiting(result)
    got = []
    result.addCallback(got.append)
    assert got and got[0][0] is IAccount


@implementer(IRealm)
class _LateRealm:
    """A realm that answers through a Deferred, as an embedder's may."""

    def __init__(self) -> None:
        self.answer: Deferred[tuple] = Deferred()

    def requestAvatar(self, avatarId, mind, *interfaces):
        return self.answer


def test_aRealmThatWaitsMakesTheLoginWait():
    realm = _LateRealm()
    checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret")
    attempts = LoginAttempts(Portal(realm, [CheckerChain([checker])]), IAccount, task.Clock())
    result = attempts.attemptNow(_credentials(), "alice")
    assert isWaiting(result)
    got = []
    result.addCallback(got.append)
    realm.answer.callback((IAccount, object(), lambda: None))
    assert isinstance(got[0], LoggedIn)


class _OwnPortal(Portal):
    """An embedder's portal that changed C{login}: it must still be asked."""

    def login(self, credentials, mind, *interfaces):
        self.asked = True
        return super().login(credentials, mind, *interfaces)


def test_aPortalWithItsOwnLoginIsAskedThroughIt():
    portal = _OwnPortal(ReferralRealm(), [InMemoryUsernamePasswordDatabaseDontUse(alice=b"x")])
    loginNow(portal, _credentials(), IAccount).addErrback(lambda f: f.trap(UnauthorizedLogin))
    assert portal.asked


def test_credentialsNoCheckerTakesAreRaisedAsUnhandled():
    @implementer(ICredentialsChecker)
    class OtherCredentialsOnly:
        credentialInterfaces = ()

    portal = Portal(ReferralRealm(), [OtherCredentialsOnly()])
    with pytest.raises(UnhandledCredentials):
        loginNow(portal, _credentials(), IAccount)


@implementer(ICredentialsChecker)
class _RaisesAtOnce:
    """A checker whose C{requestAvatarId} raises instead of failing a Deferred."""

    credentialInterfaces = (IUsernamePassword,)

    def requestAvatarId(self, credentials):
        raise UnauthorizedLogin("no")


@pytest_twisted.ensureDeferred
async def test_aCheckerRaisingAtOnceIsAFailedLogin():
    outcome = await _attempts(_RaisesAtOnce(), task.Clock(), delay=0).attempt(
        _credentials(), "alice"
    )
    assert outcome == Reject()
