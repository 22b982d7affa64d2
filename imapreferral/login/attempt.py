"""
One login attempt: C{portal.login} in, an L{Outcome} value out.

Here live the rules that are not about passdb fields, all on the injected
clock (so nobody else waits and tests do not sleep):

  - An address with recent failures waits out its penalty (L{AuthPenalty})
    before its credentials are checked, whatever the outcome will be.
  - A failed authentication is answered the failure delay after its check
    began, not after it ended: how long the passdb and the hash took (a
    known user with a slow hash, an unknown user with none) does not show.
    So a failure waits penalty + delay from arrival, and the first failure
    from an address exactly the delay. C{nodelay} answers at once after the
    check; a referral, being a successful authentication, is never delayed.
  - Every authentication is logged once, as soon as its outcome is known (so
    a client that hangs up during the delay is still logged), never with the
    password.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.cred.portal import Portal
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from imapreferral.interfaces import IReferralCarrier
from imapreferral.login.errors import (
    AuthenticationFailed,
    LoginDisabled,
    LoginProxied,
    TemporaryFailure,
)
from imapreferral.login.immediate import isWaiting, loginNow
from imapreferral.login.logline import logAuthentication, plainReferralText
from imapreferral.login.outcome import (
    Disable,
    LoggedIn,
    Outcome,
    ProxyLogin,
    Refer,
    Referral,
    Reject,
    Unavailable,
)
from imapreferral.login.penalty import AuthPenalty
from imapreferral.logtext import sessionSystem

_log = Logger()

DEFAULT_FAILURE_DELAY = 2.0


def _referralOf(thing: object) -> Any:
    carrier = IReferralCarrier(thing, None)
    return None if carrier is None else carrier.referral


def outcomeOfFailure(failure: Failure, session: str | None = None) -> Outcome | Failure:
    """
    Map a failed C{portal.login} to an outcome (L{outcomeOfError}). A
    cancelled login (the client went away) has no outcome: its
    C{CancelledError} passes through, so nothing is logged for it.
    """
    if failure.check(CancelledError):
        return failure
    return outcomeOfError(failure.value, session, failure)


def outcomeOfError(
    error: BaseException, session: str | None = None, failure: Failure | None = None
) -> Outcome:
    """
    Map a login's refusal to an outcome. Any C{UnauthorizedLogin} providing
    L{IReferralCarrier} refers, whoever's checker raised it. Anything else
    unexpected is logged with its traceback (C{failure}, or C{error}'s own).
    """
    if isinstance(error, UnauthorizedLogin):
        referral = _referralOf(error)
        if referral is not None:
            return Refer(referral, verified=getattr(error, "verified", True))
        if isinstance(error, LoginDisabled):
            return Disable(error.reason)
        if isinstance(error, LoginProxied):
            return ProxyLogin(
                error.destination, verified=error.verified, insteadOf=error.insteadOf
            )
        return Reject(nodelay=isinstance(error, AuthenticationFailed) and error.nodelay)
    if isinstance(error, TemporaryFailure):
        return Unavailable(error.why)
    if isinstance(error, UnhandledCredentials):
        return Unavailable(f"no checker handles these credentials: {error}")
    _log.failure(
        "unexpected error during login",
        failure if failure is not None else Failure(error),
        session=session,
        log_system=sessionSystem(_log.namespace, "critical", session),
    )
    return Unavailable(f"unexpected error: {error!r}")


class LoginAttempts:
    """
    Runs logins against a portal for one service.

    @ivar portal: The C{twisted.cred} portal (checker + realm).
    @ivar interface: The avatar interface to ask the realm for.
    @ivar clock: Time source for the failure delay and the penalty.
    @ivar failureDelay: Seconds from the start of a check to the answer to a
        failure; 0 disables, and then the penalty (which doubles it) too.
    @ivar penalty: The per-address penalty, or L{None} for none.
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
        Log in with C{credentials}. The Deferred never fails unless it is
        cancelled (the client went away): that cancels what is pending (the
        check, or the failure delay) and fails it with C{CancelledError}. A
        login cancelled before its outcome was known is not logged: no
        password check was completed, so there is nothing true to say.

        @param username: The login name, for the L{LoggedIn} outcome when the
            avatar id does not say.
        """
        return maybeDeferred(self.attemptNow, credentials, username)

    def attemptNow(self, credentials: object, username: str) -> Outcome | Deferred[Outcome]:
        """
        L{attempt}, but the outcome itself when it is known at once: no
        penalty to wait, a passdb and a hash that answered without waiting,
        and nothing to delay (a success, a referral, a C{nodelay} failure);
        see L{imapreferral.login.immediate}.
        """
        remote = getattr(getattr(credentials, "context", None), "remoteIP", None)
        wait = 0.0
        if self.penalty is not None:
            wait = self.penalty.checkDelay(remote, self.failureDelay)
        if wait > 0:
            return deferLater(self.clock, wait, self._check, credentials, username, remote)
        return self._check(credentials, username, remote)

    def _check(
        self, credentials: object, username: str, remote: str | None
    ) -> Outcome | Deferred[Outcome]:
        started = self.clock.seconds()
        session = getattr(getattr(credentials, "context", None), "session", None)
        try:
            result = loginNow(self.portal, credentials, self.interface)
        except Exception as e:
            outcome = outcomeOfError(e, session)
        else:
            if isWaiting(result):
                d = result.addCallbacks(
                    self._loggedIn,
                    outcomeOfFailure,
                    callbackArgs=(username,),
                    errbackArgs=(session,),
                )
                d.addCallback(self._logged, credentials, started)
                d.addCallback(self._delayFailure, remote, started)
                return d
            outcome = self._loggedIn(result, username)
        self._logged(outcome, credentials, started)
        return self._delayFailure(outcome, remote, started)

    def _logged(self, outcome: Outcome, credentials: object, started: float) -> Outcome:
        duration = self.clock.seconds() - started
        logAuthentication(outcome, credentials, self.referralText, duration)
        return outcome

    def _loggedIn(self, result: tuple[Any, Any, Any], username: str) -> Outcome:
        _, avatar, logout = result
        return LoggedIn(
            avatar=avatar,
            logout=logout,
            user=getattr(avatar, "username", username),
            referral=_referralOf(avatar),
        )

    def _delayFailure(
        self, outcome: Outcome, remote: str | None, started: float
    ) -> Outcome | Deferred[Outcome]:
        """
        Count the outcome in the penalty; answer a failure C{failureDelay}
        after its check C{started}. A C{nodelay} failure counts too: it is a
        guess like any other, only answered at once.
        """
        if not isinstance(outcome, Reject):
            proven = isinstance(outcome, LoggedIn) or (
                isinstance(outcome, Refer | ProxyLogin) and outcome.verified
            )
            if self.penalty is not None and proven:
                self.penalty.succeeded(remote, started)
            return outcome
        if self.penalty is not None:
            self.penalty.failed(remote)
        remaining = started + self.failureDelay - self.clock.seconds()
        if outcome.nodelay or remaining <= 0:
            return outcome
        return deferLater(self.clock, remaining, lambda: outcome)
