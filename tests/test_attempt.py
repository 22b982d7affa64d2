"""
The login core around the checker (L{LoginAttempts}): the authentication
penalty, when failures are answered, and clients that go away, all on an
injected clock without sockets.
"""

from __future__ import annotations

import pytest
from twisted.cred.portal import Portal
from twisted.internet import task
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, capturedLogs
from twisted.mail.imap4 import IAccount
from zope.interface import implementer

from imapreferral.imap.account import ReferralRealm
from imapreferral.interfaces import IPassdb, IPasswordVerifier
from imapreferral.login.attempt import LoginAttempts
from imapreferral.login.checker import PassdbChecker
from imapreferral.login.context import LoginContext
from imapreferral.login.credentials import PasswordCredentials
from imapreferral.login.outcome import Reject
from imapreferral.login.penalty import AuthPenalty
from imapreferral.networks import NetworkList
from imapreferral.passwords import SchemeVerifier
from imapreferral.testing import MemoryPassdb

ATTACKER = "192.0.2.66"
DELAY = 2.0
CAP = 15.0
#: A step of the clock that adds up exactly in binary floating point.
TICK = 0.25


def _attempts(clock, passdbs, **kwargs):
    portal = Portal(ReferralRealm(), [PassdbChecker(passdbs)])
    penalty = AuthPenalty(clock, NetworkList(), cap=CAP)
    return LoginAttempts(portal, IAccount, clock, DELAY, penalty=penalty, **kwargs)


def _answeredAt(clock, outcomes, limit=30.0):
    """Advance C{clock} a tick at a time until C{outcomes} has one; return when."""
    while not outcomes and clock.seconds() < limit:
        clock.advance(TICK)
    assert outcomes, f"no answer within {limit} s"
    return clock.seconds()


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


@implementer(IPasswordVerifier)
class SlowVerifier:
    """Checks passwords as L{SchemeVerifier} does, but taking C{seconds} of C{clock} time."""

    def __init__(self, clock, seconds) -> None:
        self.clock = clock
        self.seconds = seconds
        self.real = SchemeVerifier()
        self.verified = []

    def verify(self, stored, password):
        self.verified.append(stored)
        result = self.real.verify(stored, password)
        return deferLater(self.clock, self.seconds, lambda: result)

    def verifyCramMD5(self, stored, challenge, response):
        return self.real.verifyCramMD5(stored, challenge, response)

    def plaintext(self, stored):
        return self.real.plaintext(stored)


@pytest.mark.parametrize("user", [b"alice", b"nobody"], ids=["wrong-password", "unknown-user"])
def test_failureAnsweredDelayAfterArrivalWhateverTheHashTook(user):
    """
    Hashing took 230 ms for a {BLF-CRYPT} user and nothing for an unknown
    one, then came the delay: the answer's time told them apart.
    """
    clock = task.Clock()
    passdb = MemoryPassdb.fromLines({"alice": ("{PLAIN}secret", "")})
    portal = Portal(ReferralRealm(), [PassdbChecker([passdb], SlowVerifier(clock, 0.75))])
    attempts = LoginAttempts(portal, IAccount, clock, DELAY)
    assert _answeredAt(clock, _login(attempts, user, b"guess")) == DELAY
