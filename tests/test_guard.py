"""The pre-login guard on its own: a clock, a string transport, no sockets."""

from __future__ import annotations

import attrs
import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from imapreferral.limits import ConnectionLimiter
from imapreferral.login.context import LoginContext
from imapreferral.login.guard import MAX_HELD, PreLoginGuard
from imapreferral.login.outcome import (
    AuthorizationRefused,
    Disable,
    PrivacyRequired,
    Refer,
    Referral,
    Reject,
    Unavailable,
)
from imapreferral.networks import LOOPBACK, NetworkList

CLIENT = "192.0.2.7"


class Connection:
    """What a protocol gives the guard: a transport and two hooks."""

    def __init__(self, peer: str = CLIENT) -> None:
        self.transport = StringTransport(
            hostAddress=IPv4Address("TCP", "192.0.2.1", 143),
            peerAddress=IPv4Address("TCP", peer, 40000),
        )
        self.expired = 0
        self.held = False
        self.runs = 0

    def preLoginExpired(self) -> None:
        self.expired += 1

    def holdLines(self, hold: bool) -> None:
        if self.held and not hold:
            self.runs += 1
        self.held = hold


def makeGuard(
    connection: Connection | None = None,
    clock: Clock | None = None,
    limiter: ConnectionLimiter | None = None,
    plaintextAuth: str = "secure",
) -> PreLoginGuard:
    return PreLoginGuard(
        connection or Connection(),
        clock or Clock(),
        limiter,
        lifetime=300.0,
        maxBadCommands=3,
        maxAuthFailures=2,
        plaintextAuth=plaintextAuth,
        trustedNetworks=NetworkList.fromStrings(LOOPBACK),
    )


def test_preLoginLifetimeEndsTheConnectionOnTime():
    clock, connection = Clock(), Connection()
    makeGuard(connection, clock).start(handshakePending=False)
    clock.advance(299.9)
    assert connection.expired == 0
    clock.advance(0.1)
    assert connection.expired == 1


@pytest.mark.parametrize("end", ["leave", "connectionLost"])
def test_noTimerOutlivesPreLogin(end):
    clock = Clock()
    guard = makeGuard(clock=clock)
    guard.start(handshakePending=False)
    getattr(guard, end)()
    assert clock.getDelayedCalls() == []


def test_badCommandBudgetIsSpentOnTheLastAllowed():
    guard = makeGuard()
    assert [guard.badCommand() for _ in range(3)] == [False, False, True]


def test_badCommandsAfterLoginDoNotCount():
    guard = makeGuard()
    guard.leave()
    assert [guard.badCommand() for _ in range(5)] == [False] * 5


def test_authFailureBudgetIsSpentOnTheLastAllowed():
    guard = makeGuard()
    assert [guard.authFailed() for _ in range(2)] == [False, True]


@pytest.mark.parametrize(
    ("outcome", "counted"),
    [
        (Reject(), True),
        (Disable(), True),
        (PrivacyRequired(), True),
        (AuthorizationRefused("alice", "bob"), True),
        (Refer(Referral("alice", "imap2.example.com")), False),
        (Unavailable("db down"), False),
    ],
    ids=["reject", "disable", "privacyRequired", "authorizationRefused", "refer", "unavailable"],
)
def test_whichOutcomesSpendTheAuthFailureBudget(outcome, counted):
    guard = makeGuard()
    assert [guard.loginFailed(outcome) for _ in range(2)] == [False, counted]


def test_plaintextMechanismsAreNeitherOfferedNorTakenWithoutTLS():
    guard = makeGuard()
    assert guard.offeredMechanisms(("PLAIN", "CRAM-MD5", "LOGIN"), False) == ("CRAM-MD5",)
    assert guard.offeredMechanisms(("PLAIN", "CRAM-MD5"), True) == ("PLAIN", "CRAM-MD5")
    assert [guard.refusesPlaintext(m, False) for m in ("PLAIN", "LOGIN", "CRAM-MD5")] == [
        True,
        True,
        False,
    ]
    assert guard.refusesPlaintext("PLAIN", True) is False


@pytest.mark.parametrize(
    ("plaintextAuth", "secured", "peer", "allowed"),
    [
        ("secure", False, CLIENT, False),
        ("secure", True, CLIENT, True),
        ("secure", False, "127.0.0.1", True),
        ("always", False, CLIENT, True),
    ],
    ids=["cleartextFromAnywhere", "tls", "trustedNetwork", "always"],
)
def test_plaintextPolicy(plaintextAuth, secured, peer, allowed):
    guard = makeGuard(Connection(peer), plaintextAuth=plaintextAuth)
    assert guard.plaintextAllowed(secured) is allowed


def test_refusedAdmissionIsLoggedAndReturned(logged):
    limiter = ConnectionLimiter(0, 1, NetworkList())
    assert makeGuard(limiter=limiter).admit() is None
    refusal = makeGuard(limiter=limiter).admit()
    assert refusal == "Maximum number of connections from your address reached."
    assert [e["summary"] for e in logged if "summary" in e] == [
        f"refused connection remote={CLIENT} local=192.0.2.1:143: {refusal}"
    ]


def test_lostConnectionFreesItsPlace():
    limiter = ConnectionLimiter(0, 1, NetworkList())
    first = makeGuard(limiter=limiter)
    first.admit()
    first.connectionLost()
    assert makeGuard(limiter=limiter).admit() is None


def test_aForwardedClientCountsInsteadOfItsProxy():
    limiter = ConnectionLimiter(0, 1, NetworkList())
    proxied = makeGuard(limiter=limiter)
    proxied.admit()
    session = proxied.addresses().session
    named = LoginContext("198.51.100.9", 5000, "192.0.2.1", 143)
    assert proxied.forwardedFrom(named) is None
    assert proxied.addresses() == attrs.evolve(named, session=session)
    assert proxied.where() == ("198.51.100.9", "192.0.2.1:143")
    assert proxied.loginContext("PLAIN", True) == LoginContext(
        "198.51.100.9", 5000, "192.0.2.1", 143, "PLAIN", True, session=session
    )
    assert makeGuard(limiter=limiter).admit() is None  # the proxy's place is free


def test_aConnectionHasOneSessionIDForAllItsLogins():
    guard = makeGuard()
    session = guard.addresses().session
    assert session is not None and len(session) == 12
    assert guard.loginContext("PLAIN", False).session == session
    assert guard.loginContext("CRAM-MD5", True).session == session
    assert makeGuard().addresses().session != session


def test_aForwardedSessionIDReplacesOurs():
    guard = makeGuard()
    guard.forwardedFrom(LoginContext("198.51.100.9", session="front-session-1"))
    assert guard.loginContext("PLAIN", False).session == "front-session-1"


def test_aForwardedClientOverItsLimitIsRefused():
    limiter = ConnectionLimiter(0, 1, NetworkList())
    makeGuard(Connection("198.51.100.9"), limiter=limiter).admit()
    proxied = makeGuard(limiter=limiter)
    proxied.admit()
    named = LoginContext("198.51.100.9", 5000, "192.0.2.1", 143)
    refusal = proxied.forwardedFrom(named)
    assert refusal == "Maximum number of connections from your address reached."


def test_backPressureWaitsForTheTLSHandshake():
    connection = Connection()
    guard = makeGuard(connection)
    guard.start(handshakePending=True)
    assert connection.transport.producer is None
    guard.startBackPressure()
    assert connection.transport.producer is guard


def test_unreadOutputStopsReadingAndRunningLines():
    connection = Connection()
    guard = makeGuard(connection)
    guard.start(handshakePending=False)
    guard.pauseProducing()
    assert (connection.transport.producerState, connection.held) == ("paused", True)
    guard.resumeProducing()
    assert (connection.transport.producerState, connection.held) == ("producing", False)
    assert connection.runs == 1


def test_inputBehindALoginIsReadUpToTheBound():
    connection = Connection()
    guard = makeGuard(connection)
    guard.start(handshakePending=False)
    guard.holdInput()
    guard.received(MAX_HELD)
    assert (connection.transport.producerState, connection.held) == ("producing", True)
    guard.received(MAX_HELD + 1)
    assert connection.transport.producerState == "paused"
    guard.loginFinished()
    assert (connection.transport.producerState, connection.held) == ("producing", False)


@pytest.mark.parametrize("end", ["leave", "close"])
def test_theProducerGoesAtTheEndOfPreLogin(end):
    connection = Connection()
    guard = makeGuard(connection)
    guard.start(handshakePending=False)
    getattr(guard, end)()
    assert connection.transport.producer is None


def test_closingRunsNoMoreLines():
    connection = Connection()
    guard = makeGuard(connection)
    guard.start(handshakePending=False)
    guard.close()
    assert connection.held is True


def test_spentBudgetsAndTimersAreTalliedOnceEachInTheLimiter():
    """What C{imapreferral_limit_hits_total} reads: each spent budget counts once."""
    clock, limiter = Clock(), ConnectionLimiter(0, 0, NetworkList())
    guard = makeGuard(clock=clock, limiter=limiter)
    guard.start(handshakePending=False)
    for _ in range(4):
        guard.badCommand()
    for _ in range(3):
        guard.authFailed()
    guard.idleTimedOut()
    clock.advance(300)
    assert dict(limiter.hits) == {
        "max-bad-commands": 1,
        "max-auth-failures": 1,
        "preauth-idle-timeout": 1,
        "preauth-lifetime": 1,
    }


def test_idleAfterLoginIsNotAPreLoginLimit():
    limiter = ConnectionLimiter(0, 0, NetworkList())
    guard = makeGuard(limiter=limiter)
    guard.start(handshakePending=False)
    guard.leave()
    guard.idleTimedOut()
    assert not limiter.hits
