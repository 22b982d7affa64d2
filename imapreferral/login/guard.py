"""
The pre-login guard: what keeps an unauthenticated connection cheap and
bounded, whatever protocol it speaks.

L{PreLoginGuard} decides, the protocol words: it admits the connection
(the L{ConnectionLimiter}, one log line per refusal burst), holds the
pre-login time limit, counts bad commands and failed authentications
against their budgets, applies back-pressure (it is the transport's
producer until login, so a client that does not read stops being read,
and input pipelined behind a pending login is bounded), and says whether a
plaintext mechanism may be used here. The IMAP server
(L{imapreferral.imap.server}) composes one per connection and says C{BYE}
in IMAP words where the guard says the budget is spent; a POP3 or
ManageSieve front would reuse it unchanged.
"""

from __future__ import annotations

from typing import Any, Protocol

import attrs
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from imapreferral.limits import ConnectionLimiter
from imapreferral.login.client import UNKNOWN
from imapreferral.login.context import LoginContext
from imapreferral.login.logline import localText, remoteText
from imapreferral.login.outcome import (
    AuthorizationRefused,
    Disable,
    PlaintextUnavailable,
    PrivacyRequired,
    Reject,
)
from imapreferral.logtext import sessionSystem
from imapreferral.networks import NetworkList

_log = Logger()

#: Bytes a client may send behind a pending login before we stop reading.
MAX_HELD = 64 * 1024
#: SASL mechanisms that send the password in the clear.
PLAINTEXT_MECHANISMS = frozenset({"PLAIN", "LOGIN"})


def plaintextAllowed(
    plaintextAuth: str, trustedNetworks: NetworkList, peer: str | None, secured: bool
) -> bool:
    """
    Dovecot's C{disable_plaintext_auth}: a password may be sent in the
    clear over TLS, from a trusted network, or everywhere with C{always}.
    The guard's rule, and C{imapreferral auth test}'s.

    @param plaintextAuth: C{"secure"} or C{"always"}.
    @param peer: The client's address (behind HAProxy, the PROXY header's).
    @param secured: Whether the connection is TLS.
    """
    return plaintextAuth == "always" or secured or trustedNetworks.contains(peer)


def refusesPlaintext(mechanism: str, allowed: bool) -> bool:
    """Whether C{mechanism} sends the password in the clear where that is not C{allowed}."""
    return mechanism in PLAINTEXT_MECHANISMS and not allowed


class GuardedConnection(Protocol):
    """What the guard needs of the protocol it guards."""

    transport: Any

    def preLoginExpired(self) -> None:
        """The pre-login time limit ran out: say goodbye and close."""

    def holdLines(self, hold: bool) -> None:
        """Stop (C{True}) or resume processing received lines; on resume run what waited."""


@implementer(IPushProducer)
class PreLoginGuard:
    """
    One connection's pre-login guard.

    @ivar lost: Whether the connection is gone.
    @ivar closing: Whether the connection is closing: nothing more is run.
    @ivar waitingForLogin: Whether a login is pending (input is held).
    """

    def __init__(
        self,
        connection: GuardedConnection,
        clock: IReactorTime,
        limiter: ConnectionLimiter | None = None,
        *,
        lifetime: float,
        maxBadCommands: int,
        maxAuthFailures: int,
        plaintextAuth: str,
        trustedNetworks: NetworkList,
        maxHeld: int = MAX_HELD,
    ) -> None:
        """
        @param lifetime: Seconds a connection may stay unauthenticated at all.
        @param maxBadCommands: Pre-login bad commands before goodbye.
        @param maxAuthFailures: Failed authentications before goodbye.
        @param plaintextAuth: C{"secure"} or C{"always"} (Dovecot's
            C{disable_plaintext_auth = yes} or C{no}).
        @param trustedNetworks: Peers that may use plaintext without TLS.
        @param maxHeld: Bytes held behind a pending login before we stop reading.
        """
        self._connection = connection
        self._clock = clock
        self._limiter = limiter
        self._lifetimeSeconds = lifetime
        self._maxBadCommands = maxBadCommands
        self._maxAuthFailures = maxAuthFailures
        self._plaintextAuth = plaintextAuth
        self._trustedNetworks = trustedNetworks
        self._maxHeld = maxHeld
        self._admittedFrom: str | None = None
        self._admitted = False
        self._fromTrusted: bool | None = None
        self._addresses: LoginContext | None = None
        self._lifetime: IDelayedCall | None = None
        self._preLogin = True
        self._badCommands = 0
        self._authFailures = 0
        self._producing = False
        self._outputPaused = False
        self._heldTooMuch = False
        self._readPaused = False
        self.waitingForLogin = False
        self.closing = False
        self.lost = False

    # Addresses

    def _peer(self) -> str | None:
        return getattr(self._connection.transport.getPeer(), "host", None)

    def addresses(self) -> LoginContext:
        """
        Where the connection comes from and goes to. Read once (C{getHost}
        is a system call) and after PROXY-protocol parsing, which happens
        before the protocol is connected; replaced by what a trusted proxy
        says (L{forwardedFrom}).
        """
        if self._addresses is None:
            self._addresses = LoginContext.fromTransport(self._connection.transport, "")
        return self._addresses

    def loginContext(self, mechanism: str, secured: bool, client: str = UNKNOWN) -> LoginContext:
        """
        The context a login carries: L{addresses}, the mechanism, whether
        TLS, and which client the protocol recognised.
        """
        a = self.addresses()
        return LoginContext(
            a.remoteIP,
            a.remotePort,
            a.localIP,
            a.localPort,
            mechanism,
            secured,
            socketPath=a.socketPath,
            session=a.session,
            client=client,
        )

    def where(self) -> tuple[str, str]:
        """The client's and our address as the log writes them."""
        addresses = self.addresses()
        return remoteText(addresses), localText(addresses)

    # Admission

    def admit(self) -> str | None:
        """
        Count the connection against the limits. A refusal is logged (one
        line per burst, with how many went unlogged) and returned, for the
        protocol to tell the client before it closes.

        @return: Why the connection is refused, or L{None}: admitted.
        """
        if self._limiter is None:
            return None
        host = self._peer()
        refusal = self._limiter.admit(host)
        if refusal is None:
            self._admittedFrom, self._admitted = host, True
            return None
        unlogged = self._limiter.refusalToLog(host)
        if unlogged is not None:
            remote, local = self.where()
            more = f" ({unlogged:,} more refused since the last line)" if unlogged else ""
            session = self.addresses().session
            _log.warn(
                "{summary}",
                summary=f"refused connection remote={remote} local={local}: {refusal}{more}",
                event="refused connection",
                log_system=sessionSystem(_log.namespace, "warn", session),
                session=session,
                remote=remote,
                local=local,
                why=refusal,
                unlogged=unlogged,
            )
        return refusal

    def forwardedFrom(self, addresses: LoginContext) -> str | None:
        """
        A trusted proxy named the real client: its addresses count from now
        on (logs, penalty), and the connection counts against its address's
        limit instead of the proxy's.

        @return: Why that address is refused, or L{None}.
        """
        if addresses.session is None:
            addresses = attrs.evolve(addresses, session=self.addresses().session)
        self._addresses = addresses
        remoteIP = addresses.remoteIP
        if self._admitted and self._limiter is not None:
            self._limiter.release(self._admittedFrom)
            self._admitted = False
            refusal = self._limiter.admit(remoteIP)
            if refusal is not None:
                return refusal
            self._admittedFrom, self._admitted = remoteIP, True
        return None

    # Timers

    def start(self, handshakePending: bool) -> None:
        """
        The connection was admitted: the pre-login time limit starts, and
        back-pressure unless a TLS handshake is still to come (then
        L{startBackPressure} once it is done).
        """
        if not handshakePending:
            self.startBackPressure()
        self._lifetime = self._clock.callLater(self._lifetimeSeconds, self._lifetimeExceeded)

    def _lifetimeExceeded(self) -> None:
        self._lifetime = None
        self._limitHit("preauth-lifetime")
        self._connection.preLoginExpired()

    def idleTimedOut(self) -> None:
        """The protocol's idle timer ran out: before login, C{--preauth-idle-timeout}."""
        if self._preLogin:
            self._limitHit("preauth-idle-timeout")

    def _limitHit(self, limit: str) -> None:
        """Count a spent budget in the limiter's tally (L{ConnectionLimiter.hits})."""
        if self._limiter is not None:
            self._limiter.hit(limit)

    def _cancelLifetime(self) -> None:
        if self._lifetime is not None and self._lifetime.active():
            self._lifetime.cancel()
        self._lifetime = None

    def leave(self) -> None:
        """Logged in (or relaying): the time limit, budgets and back-pressure end."""
        self._preLogin = False
        self._cancelLifetime()
        self._stopBackPressure()

    def close(self) -> None:
        """
        The connection closes after what was written; nothing more is run.
        The producer goes first: Twisted's TLS layer does not shut down
        while one is registered.
        """
        self.closing = True
        self._stopBackPressure()

    def connectionLost(self) -> None:
        """The connection is gone: no timer left, its place in the limits freed."""
        self.lost = True
        self._cancelLifetime()
        if self._admitted and self._limiter is not None:
            self._limiter.release(self._admittedFrom)
            self._admitted = False

    # Budgets

    def badCommand(self) -> bool:
        """Count a pre-login bad command; C{True}: the budget is spent."""
        if not self._preLogin or self.lost:
            return False
        self._badCommands += 1
        if self._badCommands == self._maxBadCommands:
            self._limitHit("max-bad-commands")
        return self._badCommands >= self._maxBadCommands

    def loginFailed(self, outcome: object) -> bool:
        """
        Count an outcome that spends the failed-authentication budget: a
        wrong password, a disabled account, plaintext refused, an authzid
        refused (else a client could ask for another user's authorization
        until the pre-login lifetime ends); not a referral or a temporary
        failure.

        @return: C{True}: the budget is spent.
        """
        counted = Reject | Disable | PrivacyRequired | PlaintextUnavailable | AuthorizationRefused
        return isinstance(outcome, counted) and self.authFailed()

    def authFailed(self) -> bool:
        """Count a failed authentication; C{True}: the budget is spent."""
        self._authFailures += 1
        if self._authFailures == self._maxAuthFailures:
            self._limitHit("max-auth-failures")
        return self._authFailures >= self._maxAuthFailures

    # Plaintext policy

    def plaintextAllowed(self, secured: bool) -> bool:
        """L{plaintextAllowed} for this connection's peer (looked up once: L{fromTrustedNetwork})."""
        return self._plaintextAuth == "always" or secured or self.fromTrustedNetwork()

    def refusesPlaintext(self, mechanism: str, secured: bool) -> bool:
        """Whether C{mechanism} sends the password in the clear where that is not allowed."""
        return refusesPlaintext(mechanism, self.plaintextAllowed(secured))

    def offeredMechanisms(self, mechanisms: tuple[str, ...], secured: bool) -> tuple[str, ...]:
        """The mechanisms to offer: without the plaintext ones where they are refused."""
        if self.plaintextAllowed(secured):
            return mechanisms
        return tuple(m for m in mechanisms if m not in PLAINTEXT_MECHANISMS)

    def fromTrustedNetwork(self) -> bool:
        """Whether the peer (behind HAProxy, the PROXY header's) is in the trusted networks."""
        if self._fromTrusted is None:
            self._fromTrusted = self._trustedNetworks.contains(self._peer())
        return self._fromTrusted

    # Flow control. Lines are not processed while a login is pending (they
    # wait in the protocol's buffer, so literals and STARTTLS work as usual
    # afterwards) nor while the client does not read our output (the
    # transport calls pauseProducing/resumeProducing, we are its producer).
    # We stop reading the socket when output backs up, or when more than
    # maxHeld bytes wait behind a login; otherwise we keep reading, so a
    # client that hangs up is noticed at once.

    def startBackPressure(self) -> None:
        """
        Register as the transport's producer: it pauses us (we stop reading)
        while a client does not read what we write, where Twisted would
        buffer without bound. Not during a TLS handshake: the TLS layer
        pauses its producer while the handshake holds our greeting back,
        and would then stop reading the handshake itself.
        """
        if not self._producing and self._preLogin and not self.lost:
            self._connection.transport.registerProducer(self, True)
            self._producing = True

    def _stopBackPressure(self) -> None:
        if self._producing:
            # Twisted's IMAP FETCH registers its own producer on the transport.
            self._connection.transport.unregisterProducer()
            self._producing = False
            self._outputPaused = False
            self._applyFlow()

    def holdInput(self) -> None:
        """A login is pending: hold the lines behind it."""
        self.waitingForLogin = True
        self._applyFlow()

    def loginFinished(self) -> None:
        """The login's reply is out: run what waited behind it."""
        self.waitingForLogin = self._heldTooMuch = False
        if not self.lost:
            self._applyFlow()

    def received(self, buffered: int) -> None:
        """Bytes wait unprocessed: past C{maxHeld} behind a login, stop reading."""
        if self.waitingForLogin and buffered > self._maxHeld and not self._heldTooMuch:
            self._heldTooMuch = True
            self._applyFlow()

    def pauseProducing(self) -> None:
        self._outputPaused = True
        self._applyFlow()

    def resumeProducing(self) -> None:
        self._outputPaused = False
        self._applyFlow()

    def stopProducing(self) -> None:
        """The transport is going away: nothing more is run."""
        self._connection.holdLines(True)
        self._connection.transport.stopProducing()

    def _applyFlow(self) -> None:
        readPaused = self._outputPaused or self._heldTooMuch
        if readPaused != self._readPaused and not self.lost:
            self._readPaused = readPaused
            if readPaused:
                self._connection.transport.pauseProducing()
            else:
                self._connection.transport.resumeProducing()
        self._connection.holdLines(self._outputPaused or self.waitingForLogin or self.closing)
