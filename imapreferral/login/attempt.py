"""
One login attempt: C{portal.login} in, an L{Outcome} value out.

Here live the rules that are not about passdb fields: every authentication
is logged once, as soon as its outcome is known (so a client that hangs up
during the delay is still logged), never with the password; and a
failed authentication is answered only after the failure delay (on the
injected clock, so nobody else waits and tests do not sleep), and a referral,
being a successful authentication, is never delayed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from imapreferral.interfaces import IReferralCarrier
from imapreferral.login.errors import AuthenticationFailed, LoginDisabled, TemporaryFailure
from imapreferral.login.logline import logAuthentication, plainReferralText
from imapreferral.login.outcome import (
    Disable,
    LoggedIn,
    Outcome,
    Refer,
    Referral,
    Reject,
    Unavailable,
)
from imapreferral.login.penalty import AuthPenalty

_log = Logger()

DEFAULT_FAILURE_DELAY = 2.0


def _referralOf(thing: object) -> Any:
    carrier = IReferralCarrier(thing, None)
    return None if carrier is None else carrier.referral


def outcomeOfFailure(failure: Failure) -> Outcome:
    """
    Map a failed C{portal.login} to an outcome. Any C{UnauthorizedLogin}
    providing L{IReferralCarrier} refers, whoever's checker raised it.
    """
    error = failure.value
    if isinstance(error, UnauthorizedLogin):
        referral = _referralOf(error)
        if referral is not None:
            return Refer(referral, verified=getattr(error, "verified", True))
        if isinstance(error, LoginDisabled):
            return Disable(error.reason)
        return Reject(nodelay=isinstance(error, AuthenticationFailed) and error.nodelay)
    if isinstance(error, TemporaryFailure):
        return Unavailable(error.why)
    if isinstance(error, UnhandledCredentials):
        return Unavailable(f"no checker handles these credentials: {error}")
    _log.failure("unexpected error during login", failure)
    return Unavailable(f"unexpected error: {error!r}")


class LoginAttempts:
    """
    Runs logins against a portal for one service.

    @ivar portal: The C{twisted.cred} portal (checker + realm).
    @ivar interface: The avatar interface to ask the realm for.
    @ivar clock: Time source for the failure delay.
    @ivar failureDelay: Seconds before a failure is answered; 0 disables.
    """

    def __init__(
        self,
        portal: Portal,
        interface: type,
        clock: IReactorTime,
        failureDelay: float = DEFAULT_FAILURE_DELAY,
        referralText: Callable[[Referral, str], str] = plainReferralText,
        penalty: AuthPenalty | None = None,
    ) -> None:
        self.portal = portal
        self.referralText = referralText
        self.penalty = penalty
        self.interface = interface
        self.clock = clock
        self.failureDelay = failureDelay

    def attempt(self, credentials: object, username: str) -> Deferred[Outcome]:
        """
        Log in with C{credentials}. The Deferred never fails; cancelling it
        (the client went away) cancels a pending failure delay.

        @param username: The login name, for the L{LoggedIn} outcome when the
            avatar id does not say.
        """
        d = self.portal.login(credentials, None, self.interface)
        d.addCallbacks(self._loggedIn, outcomeOfFailure, callbackArgs=(username,))
        d.addCallback(self._logged, credentials)
        d.addCallback(self._delayFailure, getattr(credentials, "context", None))
        return d

    def _logged(self, outcome: Outcome, credentials: object) -> Outcome:
        logAuthentication(outcome, credentials, self.referralText)
        return outcome

    def _loggedIn(self, result: tuple[Any, Any, Any], username: str) -> Outcome:
        _, avatar, logout = result
        return LoggedIn(
            avatar=avatar,
            logout=logout,
            user=getattr(avatar, "username", username),
            referral=_referralOf(avatar),
        )

    def _delayFailure(self, outcome: Outcome, context: Any) -> Outcome | Deferred[Outcome]:
        remote = getattr(context, "remoteIP", None)
        if not isinstance(outcome, Reject):
            proven = isinstance(outcome, LoggedIn) or (
                isinstance(outcome, Refer) and outcome.verified
            )
            if self.penalty is not None and proven:
                self.penalty.succeeded(remote)
            return outcome
        if outcome.nodelay or self.failureDelay <= 0:
            return outcome
        delay = self.failureDelay
        if self.penalty is not None:
            delay = self.penalty.failureDelay(remote, delay)
        return deferLater(self.clock, delay, lambda: outcome)
