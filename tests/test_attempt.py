"""
The login core around the checker (L{LoginAttempts}): the authentication
penalty, when failures are answered, and clients that go away, all on an
injected clock without sockets.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.portal import Portal
from twisted.internet import task
from twisted.internet.defer import CancelledError, Deferred, fail
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
from imapreferral.login.errors import AuthenticationFailed
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


@implementer(ICredentialsChecker)
class WrongPasswords:
    """A checker that fails every login at once, counting its checks."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, clock=None, nodelay=False) -> None:
        self.clock = clock
        self.nodelay = nodelay
        self.checks = 0
        self.checkedAt = []

    def requestAvatarId(self, credentials):
        self.checks += 1
        if self.clock is not None:
            self.checkedAt.append(self.clock.seconds())
        return fail(AuthenticationFailed(nodelay=self.nodelay))


def _attempts(clock, passdbs, **kwargs):
    return _attemptsFor(clock, PassdbChecker(passdbs), **kwargs)


def _attemptsFor(clock, checker, **kwargs):
    portal = Portal(ReferralRealm(), [checker])
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


def _penaltyWait(failures):
    """The wait before the check for an address with C{failures} failures."""
    return 0.0 if not failures else min(CAP, DELAY * 2.0 ** min(failures, 10))


def test_penaltyStaysAtCapAfterThousandsOfFailures():
    """
    2 s doubled 1,024 times overflowed a float: from then on every wrong
    password was answered at once, UNAVAILABLE, with a critical traceback.
    Here one failure, then 5,000 in concurrent batches of 10: each attempt
    waits what the failures before its arrival earned, soon the cap.
    """
    clock = task.Clock()
    checker = WrongPasswords()
    attempts = _attemptsFor(clock, checker)
    with capturedLogs() as events:
        for batch, size in enumerate([1] + [10] * 500):
            failures = checker.checks
            outcomes = [_login(attempts, b"alice", b"guess%d" % n) for n in range(size)]
            wait = _penaltyWait(failures)
            if wait:
                clock.advance(wait - TICK)
                assert checker.checks == failures, f"batch {batch} checked before {wait} s"
                clock.advance(TICK)
            assert checker.checks == failures + size, f"batch {batch} not checked after {wait} s"
            clock.advance(DELAY - TICK)
            assert outcomes == [[]] * size, f"batch {batch} answered early"
            clock.advance(TICK)
            assert outcomes == [[Reject()]] * size, f"batch {batch}: {outcomes[0]}"
    assert wait == CAP and checker.checks == 5001
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


@pytest.mark.parametrize(
    ("earlier", "checkedAt", "answeredAt"),
    [
        (0, 0.0, 2.0),  # a fresh address: exactly the failure delay
        (1, 4.0, 6.0),  # the penalty (4, 8, 15 s) comes before the check...
        (2, 8.0, 10.0),
        (3, 15.0, 17.0),  # ...at most the cap...
        (40, 15.0, 17.0),
        # ...and the failure delay after it: never sooner than before (4, 8, 15 s).
    ],
    ids=lambda v: str(v),
)
def test_penaltyWaitsBeforeTheCheck(earlier, checkedAt, answeredAt):
    clock = task.Clock()
    checker = WrongPasswords(clock)
    attempts = _attemptsFor(clock, checker)
    for _ in range(earlier):
        attempts.penalty.failed(ATTACKER)
    assert _answeredAt(clock, _login(attempts, b"alice", b"guess")) == answeredAt
    assert checker.checkedAt == [checkedAt]


def test_clientLeavingDuringPenaltyGetsNothingChecked():
    clock = task.Clock()
    checker = WrongPasswords(clock)
    attempts = _attemptsFor(clock, checker)
    attempts.penalty.failed(ATTACKER)
    with capturedLogs() as events:
        d = attempts.attempt(_credentials(remote=ATTACKER), "bob")
        clock.advance(3.0)
        failures = []
        d.addErrback(failures.append)
        d.cancel()
        clock.advance(60.0)
    assert [f.type for f in failures] == [CancelledError]
    assert checker.checks == 0
    assert clock.getDelayedCalls() == []
    assert events == []


def test_rightPasswordFromPenalisedAddressWaitsToo():
    """As in Dovecot: the wait is before the check, whose outcome it cannot know."""
    clock = task.Clock()
    passdb = MemoryPassdb.fromLines({"alice": ("{PLAIN}secret", "")})
    attempts = _attempts(clock, [passdb])
    for _ in range(2):
        attempts.penalty.failed(ATTACKER)
    outcomes = _login(attempts, b"alice", b"secret")
    assert _answeredAt(clock, outcomes) == 8.0
    assert outcomes[0].user == "alice"
    assert attempts.penalty.checkDelay(ATTACKER, DELAY) == 0  # and it cleared the record


def test_trustedAddressNeverWaits():
    clock = task.Clock()
    checker = WrongPasswords(clock)
    portal = Portal(ReferralRealm(), [checker])
    penalty = AuthPenalty(clock, NetworkList.fromStrings(["192.0.2.0/24"]), cap=CAP)
    attempts = LoginAttempts(portal, IAccount, clock, DELAY, penalty=penalty)
    answers = []
    for _ in range(5):
        start = clock.seconds()
        answers.append(_answeredAt(clock, _login(attempts, b"alice", b"guess")) - start)
    assert answers == [DELAY] * 5


def test_nodelayFailuresCountTowardThePenalty():
    """A nodelay user's wrong password is answered at once, but it is a guess like any."""
    clock = task.Clock()
    checker = WrongPasswords(clock, nodelay=True)
    attempts = _attemptsFor(clock, checker)
    assert _login(attempts, b"fwd", b"guess") == [Reject(nodelay=True)]
    assert _answeredAt(clock, _login(attempts, b"fwd", b"guess")) == 4.0


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


class QueuedVerifier(SlowVerifier):
    """The hashing pool's queue: each check ends C{seconds} after the one before."""

    def verify(self, stored, password):
        self.verified.append(stored)
        result = self.real.verify(stored, password)
        return deferLater(self.clock, self.seconds * len(self.verified), lambda: result)


def test_ownLoginQueuedBehindGuessesDoesNotClearThem():
    """
    A client with an account of its own sent four guesses, then its own
    login: all arrived unpenalised, the guesses failed while its own
    password waited in the pool, and its success cleared the address's
    record, so the next batch of guesses was unpenalised too (measured
    against twistd: 2 of 3 rounds of 16 guesses without a wait).
    """
    clock = task.Clock()
    passdb = MemoryPassdb.fromLines({"target": ("{PLAIN}secret", ""), "own": ("{PLAIN}mine", "")})
    attempts = _attemptsFor(clock, PassdbChecker([passdb], QueuedVerifier(clock, TICK)))
    for n in range(4):
        _login(attempts, b"target", b"guess%d" % n)
    own = _login(attempts, b"own", b"mine")
    assert _answeredAt(clock, own) == 5 * TICK and own[0].user == "own"
    assert attempts.penalty.checkDelay(ATTACKER, DELAY) == CAP
    clock.advance(DELAY)


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


class RecordingVerifier(SchemeVerifier):
    """The real verifier, noting what it is asked to check and the decoys it makes."""

    def __init__(self) -> None:
        super().__init__()
        self.verified = []
        self.decoys = []

    def verify(self, stored, password):
        self.verified.append((stored, password))
        return super().verify(stored, password)

    def decoyLike(self, stored):
        d = super().decoyLike(stored)
        self.decoys.append(d)
        return d


ALICE = "{BLF-CRYPT}$2y$05$2vH27rDQYTDdIvkbKBklAelmG9VFy.qAHCPLTUgDwOu6FW09Vkw6."


@pytest_twisted.ensureDeferred
async def test_unknownUserIsCheckedAgainstADecoyWhenTheDelayIsZero():
    """
    Without a failure delay the answer's speed is the hashing time: an
    unknown user's password is hashed too, against a decoy of the scheme and
    cost the passdb uses, made once in the hashing pool.
    """
    verifier = RecordingVerifier()
    passdb = MemoryPassdb.fromLines({"alice": (ALICE, "")})
    portal = Portal(ReferralRealm(), [PassdbChecker([passdb], verifier)])
    attempts = LoginAttempts(portal, IAccount, task.Clock(), failureDelay=0)
    try:
        assert await attempts.attempt(_credentials(b"alice", b"guess"), "alice") == Reject()
        [made] = verifier.decoys  # made in the pool, once
        await made
        assert await attempts.attempt(_credentials(b"nobody", b"guess"), "nobody") == Reject()
    finally:
        await verifier.stopService()
    assert [password for _, password in verifier.verified] == [b"guess", b"guess"]
    decoy = verifier.verified[1][0]
    assert decoy != ALICE and decoy.startswith("{BLF-CRYPT}$2y$05$")


DAVE = "{BLF-CRYPT}$2y$05$8XRzVS9ui5KyhlE8fWKaWO/RgQQS.lE/CaIeZi8lggB8mD3FFjJIK"


@pytest_twisted.ensureDeferred
async def test_decoySchemeIsTheUsersNotTheLookups():
    """
    The decoy imitates the scheme most users have. Counting lookups let a
    client choose it: ten wrong passwords for one known {PLAIN} user, and
    unknown users cost nothing while {BLF-CRYPT} users cost a hash.
    """
    verifier = RecordingVerifier()
    passdb = MemoryPassdb.fromLines(
        {"alice": (ALICE, ""), "dave": (DAVE, ""), "test": ("{PLAIN}test", "")}
    )
    portal = Portal(ReferralRealm(), [PassdbChecker([passdb], verifier)])
    attempts = LoginAttempts(portal, IAccount, task.Clock(), failureDelay=0)
    try:
        for user in [b"alice", b"dave"] + [b"test"] * 10:
            await attempts.attempt(_credentials(user, b"guess"), user.decode())
        for made in verifier.decoys:
            await made
        await attempts.attempt(_credentials(b"nobody", b"guess"), "nobody")
    finally:
        await verifier.stopService()
    assert verifier.verified[-1][0].startswith("{BLF-CRYPT}$2y$05$")


def test_loginLineSaysHowLongTheCheckTookWithoutPenaltyOrDelay():
    """The C{durationMs} of the login event (C{imapreferral_login_seconds}): the check only."""
    clock = task.Clock()
    passdb = MemoryPassdb.fromLines({"alice": ("{PLAIN}secret", "")})
    attempts = _attemptsFor(clock, PassdbChecker([passdb], SlowVerifier(clock, 0.75)))
    attempts.penalty.failed(ATTACKER)  # 4 s before the check
    with capturedLogs() as events:
        outcomes = _login(attempts, b"alice", b"wrong")
        assert _answeredAt(clock, outcomes) == 4.0 + DELAY
    (event,) = events
    assert (event["result"], event["durationMs"]) == ("authentication failed", 750)


class FailingPassdb:
    def lookup(self, username, context):
        return fail(RuntimeError("down"))

    def canProvidePlaintext(self):
        return True


def test_checkerTimesEveryPassdbLookupThatAnswered():
    """What C{imapreferral_passdb_lookup_seconds} gets, per passdb, found or not or failed."""
    failing = FailingPassdb()
    empty = MemoryPassdb.fromLines({})
    found = MemoryPassdb.fromLines({"bob": ("{PLAIN}pw", "")})
    # Each lookup's start and end; then the password check's (not counted).
    times = iter([0.0, 0.5, 1.0, 1.25, 2.0, 2.125, 3.0, 4.0])
    timed = []
    checker = PassdbChecker(
        [failing, empty, found],
        lookupTimed=lambda passdb, seconds: timed.append((passdb, seconds)),
        timer=lambda: next(times),
    )
    checker.requestAvatarId(_credentials())
    assert timed == [(failing, 0.5), (empty, 0.25), (found, 0.125)]


def test_penalisedCountsAddressesNotYetForgiven():
    """What C{imapreferral_penalised_addresses} reads."""
    clock = task.Clock()
    penalty = AuthPenalty(clock, NetworkList.fromStrings(["192.0.2.0/24"]), cap=CAP, forget=60)
    penalty.failed("198.51.100.1")
    penalty.failed("198.51.100.1")
    penalty.failed("192.0.2.1")  # trusted: never penalised
    clock.advance(30)
    penalty.failed("2001:db8:1::1")
    penalty.failed("2001:db8:1::2")  # the same /48
    assert penalty.penalised() == 2
    clock.advance(31)
    assert penalty.penalised() == 1
    penalty.succeeded("2001:db8:1::3")
    assert penalty.penalised() == 0


class SlowPassdb:
    """A passdb that answers after C{seconds} of C{clock} time."""

    def __init__(self, clock, seconds, passdb) -> None:
        self.clock, self.seconds, self.passdb = clock, seconds, passdb

    def lookup(self, username, context):
        return deferLater(self.clock, self.seconds, self.passdb.lookup, username, context)

    def canProvidePlaintext(self):
        return True


@pytest.mark.parametrize("cached", [False, True], ids=["plain", "behind the auth cache"])
def test_lookupTimeLeavesOutThePasswordCheck(cached):
    """Even where the passdb runs the check itself (the auth cache), only the lookup counts."""
    from imapreferral.passdbs.cache import AuthCache, CachedPassdb

    clock = task.Clock()
    passdb = SlowPassdb(clock, 0.5, MemoryPassdb.fromLines({"bob": ("{PLAIN}pw", "")}))
    if cached:
        passdb = CachedPassdb(passdb, AuthCache(1 << 20, clock=clock), "passdb0")
    timed = []
    checker = PassdbChecker(
        [passdb],
        SlowVerifier(clock, 0.75),
        lookupTimed=lambda p, seconds: timed.append(seconds),
        timer=clock.seconds,
    )
    avatars = []
    checker.requestAvatarId(_credentials()).addCallback(avatars.append)
    clock.advance(0.5)
    clock.advance(0.75)
    assert [a.username for a in avatars] == ["bob"]
    assert timed == [0.5]
