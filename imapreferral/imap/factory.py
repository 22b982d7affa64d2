"""
L{ReferralServerFactory}: what an application listens with.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.portal import Portal
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.mail.imap4 import IAccount

from imapreferral.imap.policy import ServerPolicy, validateServerURL
from imapreferral.imap.responses import referralURL, sanitiseText
from imapreferral.imap.server import ReferralIMAP4Server
from imapreferral.limits import ConnectionLimiter
from imapreferral.login.attempt import DEFAULT_FAILURE_DELAY, LoginAttempts
from imapreferral.login.outcome import Referral
from imapreferral.login.penalty import AuthPenalty
from imapreferral.login.sasl import MECHANISMS
from imapreferral.proxy.connect import BackendConnector
from imapreferral.shutdown import Drain

REFERRAL_AUTH_CHOICES = ("mech", "*")


def defaultMechanisms(portal: Portal) -> tuple[str, ...]:
    """
    What the portal's checkers can check: C{PLAIN LOGIN} when one takes
    cleartext passwords, C{CRAM-MD5} when one takes hashed credentials and
    (if it can tell) may hold plaintext passwords.
    """
    mechanisms: tuple[str, ...] = ()
    if IUsernamePassword in portal.checkers:
        mechanisms += ("PLAIN", "LOGIN")
    checker = portal.checkers.get(IUsernameHashedPassword)
    if checker is not None and getattr(checker, "canProvidePlaintext", lambda: True)():
        mechanisms += ("CRAM-MD5",)
    return mechanisms


class ReferralServerFactory(ServerFactory):
    """
    Builds L{ReferralIMAP4Server}s sharing one portal, login policy,
    connection limits and authentication penalty.

    @param portal: A portal whose realm gives C{IAccount} avatars, e.g.
        C{Portal(ReferralRealm(), [PassdbChecker([...])])}.
    @param clock: Time source for failure delays and timeouts; defaults to
        the global reactor.
    @param failureDelay: Seconds before a failed authentication is answered.
    @param referralAuth: C{"mech"} or C{"*"}; see L{ServerPolicy}.
    @param mechanisms: SASL mechanisms to offer; see L{defaultMechanisms}.
    @param greeting: The text after C{* OK [CAPABILITY ...]}.
    @param maxConnections: Most connections at once (0: no limit).
    @param maxConnectionsPerAddress: Most from one client address (IPv6: one
        /48), trusted networks exempt (0: no limit).
    @param authPenaltyCap: Longest wait before the credentials of an address
        with recent failures are checked (0 disables the penalty); see
        L{AuthPenalty}.
    @param connector: Logs in to proxy backends (C{proxy} passdb replies);
        by default one on the global reactor and C{clock} with the system
        trust store and Dovecot's retry policy.
    @param policyFields: Any other L{ServerPolicy} field (C{tlsContext},
        C{trustedNetworks}, C{plaintextAuth}, C{greetingReferral}, ...).
    """

    protocol = ReferralIMAP4Server

    def __init__(
        self,
        portal: Portal,
        clock: IReactorTime | None = None,
        failureDelay: float = DEFAULT_FAILURE_DELAY,
        referralAuth: str = "mech",
        mechanisms: Sequence[str] | None = None,
        greeting: str = "imapreferral ready.",
        maxConnections: int = 2000,
        maxConnectionsPerAddress: int = 20,
        authPenaltyCap: float = 15.0,
        connector: BackendConnector | None = None,
        **policyFields: Any,
    ) -> None:
        if referralAuth not in REFERRAL_AUTH_CHOICES:
            raise ValueError(f"referralAuth must be one of {REFERRAL_AUTH_CHOICES}")
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[assignment]
        if mechanisms is None:
            mechanisms = defaultMechanisms(portal)
        unknown = [m for m in mechanisms if m.upper() not in MECHANISMS]
        if unknown:
            raise ValueError(f"unsupported SASL mechanisms {unknown}; known: {list(MECHANISMS)}")
        if policyFields.get("greetingReferral") is not None:
            validateServerURL(policyFields["greetingReferral"])
        self.portal = portal
        if connector is None:
            from twisted.internet import reactor

            connector = BackendConnector(reactor, clock)
        self.connector = connector
        #: The proxied sessions being relayed, for L{closeRelays}.
        self.relays: set[Any] = set()
        #: Every open connection, for shutdown (L{imapreferral.shutdown}).
        self.connections: set[ReferralIMAP4Server] = set()
        #: The shutdown in progress, or L{None}.
        self.drain: Drain | None = None
        self.policy = ServerPolicy(
            mechanisms=tuple(m.upper() for m in mechanisms),
            passwordsCheckable=IUsernamePassword in portal.checkers,
            referralAuth=referralAuth,
            greeting=sanitiseText(greeting, "imapreferral ready."),
            hostname=socket.gethostname(),
            **policyFields,
        )
        self.limiter = ConnectionLimiter(
            maxConnections, maxConnectionsPerAddress, self.policy.trustedNetworks, clock
        )
        penalty = None
        if authPenaltyCap > 0:
            penalty = AuthPenalty(clock, self.policy.trustedNetworks, cap=authPenaltyCap)
        self.attempts = LoginAttempts(
            portal, IAccount, clock, failureDelay, referralText=self._referralText, penalty=penalty
        )

    def _referralText(self, referral: Referral, mechanism: str) -> str:
        return referralURL(referral, "*" if self.policy.referralAuth == "*" else mechanism)

    def closeRelays(self) -> None:
        """Shutdown: end every relayed session (both sides flushed, then closed)."""
        for relay in list(self.relays):
            relay.close()

    def buildProtocol(self, addr: IAddress) -> ReferralIMAP4Server:
        proto = self.protocol(self.attempts, self.policy, self.limiter, self.connector)
        proto.factory = self
        proto.portal = self.portal
        self.connections.add(proto)
        return proto

    def connectionEnded(self, proto: ReferralIMAP4Server) -> None:
        """One of our connections is gone (its C{connectionLost})."""
        self.connections.discard(proto)
        if self.drain is not None:
            self.drain.connectionEnded()
