"""
How the checker reports a login that did not simply succeed.

A small tree under C{twisted.cred}'s L{UnauthorizedLogin}, so code that
only knows cred still reads a referral as "not logged in here".
"""

from __future__ import annotations

from twisted.cred.error import UnauthorizedLogin
from zope.interface import implementer

from imapreferral.interfaces import IReferralCarrier
from imapreferral.login.outcome import ProxyDestination, Referral


@implementer(IReferralCarrier)
class LoginReferral(UnauthorizedLogin):
    """
    The password was right (or not needed), but the user must log in at
    C{referral} instead (C{host} + C{nologin}).
    """

    def __init__(self, referral: Referral, verified: bool = True) -> None:
        """
        @param verified: Whether the password was checked (not C{nopassword});
            only then does the referral clear the address's penalty.
        """
        super().__init__(f"referred to {referral.host}")
        self.referral = referral
        self.verified = verified


class LoginProxied(UnauthorizedLogin):
    """
    Not logged in here: the passdb says C{proxy}, so the protocol layer logs
    in to C{destination} and relays the session there.

    @ivar verified: Whether the password was checked here (not C{nopassword}).
    @ivar insteadOf: The referral this proxying replaces (C{--referral-mode
        proxy} or C{auto}), or L{None} for a C{proxy} reply.
    """

    def __init__(
        self,
        destination: ProxyDestination,
        verified: bool = True,
        insteadOf: Referral | None = None,
    ) -> None:
        super().__init__(f"proxied to {destination.address}")
        self.destination = destination
        self.verified = verified
        self.insteadOf = insteadOf


class LoginDisabled(UnauthorizedLogin):
    """C{nologin} without C{host}: the user may not log in anywhere here."""

    def __init__(self, reason: str | None = None) -> None:
        super().__init__("login disabled")
        self.reason = reason


class AuthenticationFailed(UnauthorizedLogin):
    """
    Wrong password or unknown user. C{nodelay} is the passdb's wish to skip
    the failure delay.
    """

    def __init__(self, nodelay: bool = False) -> None:
        super().__init__("authentication failed")
        self.nodelay = nodelay


class TemporaryFailure(Exception):
    """
    The login could not be decided now: a passdb is down or returned
    something unusable. Not an L{UnauthorizedLogin}: the password may well
    be right. C{why} goes to the server log, never to the client.
    """

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why
