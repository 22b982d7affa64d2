"""
The login core around the checker (L{LoginAttempts}): the authentication
penalty, when failures are answered, and clients that go away, all on an
injected clock without sockets.
"""

from __future__ import annotations

from twisted.cred.portal import Portal
from twisted.internet import task
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import LogLevel, capturedLogs
from twisted.mail.imap4 import IAccount
from zope.interface import implementer

from imapreferral.imap.account import ReferralRealm
from imapreferral.interfaces import IPassdb
from imapreferral.login.attempt import LoginAttempts
from imapreferral.login.checker import PassdbChecker
from imapreferral.login.context import LoginContext
from imapreferral.login.credentials import PasswordCredentials
from imapreferral.login.outcome import Reject
from imapreferral.login.penalty import AuthPenalty
from imapreferral.networks import NetworkList
from imapreferral.testing import MemoryPassdb

ATTACKER = "192.0.2.66"
DELAY = 2.0
CAP = 15.0


def _attempts(clock, passdbs, **kwargs):
    portal = Portal(ReferralRealm(), [PassdbChecker(passdbs)])
    penalty = AuthPenalty(clock, NetworkList(), cap=CAP)
    return LoginAttempts(portal, IAccount, clock, DELAY, penalty=penalty, **kwargs)


def _login(attempts, user, password, remote=ATTACKER):
    credentials = PasswordCredentials(user, password, LoginContext(remoteIP=remote))
    outcomes = []
    attempts.attempt(credentials, user.decode()).addCallback(outcomes.append)
    return outcomes


def test_penaltyStaysAtCapAfterThousandsOfFailures():
    """
    2 s doubled 1,024 times overflowed a float: from then on every wrong
    password was answered at once, UNAVAILABLE, with a critical traceback.
    """
    clock = task.Clock()
    passdb = MemoryPassdb.fromLines({"alice": ("{PLAIN}secret", "")})
    attempts = _attempts(clock, [passdb])
    with capturedLogs() as events:
        for n in range(5000):
            outcomes = _login(attempts, b"alice", b"guess%d" % n)
            clock.advance(CAP - 0.001)
            assert n < 3 or not outcomes, f"failure {n} answered before the cap"
            clock.advance(0.001)
            assert outcomes == [Reject()], f"failure {n}: {outcomes}"
    assert not [e for e in events if e["log_level"] >= LogLevel.error]


@implementer(IPassdb)
class HangingPassdb:
    """A passdb whose lookups never answer; records whether they were cancelled."""

    def __init__(self) -> None:
        self.cancelled = 0

    def lookup(self, username, context):
        def cancel(d):
            self.cancelled += 1

        return Deferred(cancel)

    def canProvidePlaintext(self):
        return True


def _credentials(user=b"bob", password=b"pw", remote="127.0.0.1"):
    return PasswordCredentials(user, password, LoginContext(remoteIP=remote))


def test_checkerCancelledMidLookupAsksNoFurtherPassdb():
    hanging = HangingPassdb()
    second = MemoryPassdb.fromLines({"bob": ("{PLAIN}pw", "host=imap2.example.com nologin")})
    d = PassdbChecker([hanging, second]).requestAvatarId(_credentials())
    failures = []
    d.addErrback(failures.append)
    d.cancel()
    assert hanging.cancelled == 1
    assert second.lookups == []
    assert [f.type for f in failures] == [CancelledError]


def test_loginCancelledMidLookupLogsNothing():
    """Not a false "temporary failure", nor "referred" for a client that is gone."""
    hanging = HangingPassdb()
    second = MemoryPassdb.fromLines({"bob": ("{PLAIN}pw", "host=imap2.example.com nologin")})
    attempts = _attempts(task.Clock(), [hanging, second])
    with capturedLogs() as events:
        d = attempts.attempt(_credentials(), "bob")
        failures = []
        d.addErrback(failures.append)
        d.cancel()
    assert [f.type for f in failures] == [CancelledError]
    assert events == []
