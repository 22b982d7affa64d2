"""
L{ReferralIMAP4Server}: Twisted's C{IMAP4Server} with a login path that
speaks RFC 2221 login referrals.

Only plumbing lives here: parse C{LOGIN} and C{AUTHENTICATE} (with RFC 4959
SASL-IR), run the attempt, write the reply that
L{imapreferral.imap.responses.renderOutcome} words. Twisted dispatches
commands through class attributes holding the base class's functions
(C{unauth_LOGIN = (do_LOGIN, ...)}), so each override re-declares its tuple.
"""

from __future__ import annotations

import binascii
from base64 import b64decode, b64encode
from collections.abc import Sequence

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger
from twisted.mail.imap4 import IllegalClientResponse, IMAP4Server
from twisted.python.failure import Failure

from imapreferral.imap.responses import UNAVAILABLE, renderOutcome
from imapreferral.login.attempt import LoginAttempts
from imapreferral.login.context import LoginContext
from imapreferral.login.credentials import PasswordCredentials
from imapreferral.login.outcome import (
    LoggedIn,
    Outcome,
)
from imapreferral.login.sasl import (
    MECHANISMS,
    AuthorizationRefused,
    Challenge,
    SASLError,
    SASLMechanism,
)

_log = Logger()

_ALWAYS = {b"SASL-IR": None, b"LOGIN-REFERRALS": None}


class ReferralIMAP4Server(IMAP4Server):
    """
    An IMAP4rev1 server whose logins go through L{LoginAttempts}.

    @ivar attempts: Runs logins (portal, failure delay, clock).
    @ivar mechanisms: SASL mechanisms to offer, e.g. C{("PLAIN", "LOGIN")}.
    @ivar referralAuth: C{"mech"} to put the mechanism used in C{;AUTH=}
        (as Dovecot), or C{"*"}.
    """

    def __init__(
        self,
        attempts: LoginAttempts,
        mechanisms: Sequence[str] = ("PLAIN", "LOGIN"),
        referralAuth: str = "mech",
        greeting: bytes = b"imapreferral ready.",
        hostname: str = "imapreferral",
    ) -> None:
        super().__init__(chal={})
        self.attempts = attempts
        self.mechanisms = tuple(m.upper() for m in mechanisms)
        self.referralAuth = referralAuth
        self.IDENT = greeting
        self.hostname = hostname
        self.callLater = attempts.clock.callLater  # TimeoutMixin's idle timer
        self._pendingLogin: Deferred[None] | None = None
        self._sasl: tuple[bytes, SASLMechanism] | None = None
        self._lost = False

    # Capabilities

    def capabilities(self) -> dict[bytes, list[bytes] | None]:
        """
        Advertise what we implement: pre-login C{SASL-IR LOGIN-REFERRALS}
        and the C{AUTH=} mechanisms; after login also what Twisted's
        authenticated state offers.
        """
        caps: dict[bytes, list[bytes] | None] = dict(_ALWAYS)
        if self.state == "unauth":
            caps[b"AUTH"] = [m.encode("ascii") for m in self.mechanisms]
        else:
            caps[b"NAMESPACE"] = None
            caps[b"IDLE"] = None
        return caps

    def _secured(self) -> bool:
        return bool(self.startedTLS) or ISSLTransport(self.transport, None) is not None

    def _context(self, mechanism: str) -> LoginContext:
        return LoginContext.fromTransport(self.transport, mechanism, self._secured())

    # LOGIN

    def do_LOGIN(self, tag: bytes, user: bytes, passwd: bytes) -> None:
        self._login(tag, PasswordCredentials(user, passwd, self._context("PLAIN")), "PLAIN")

    def arg_loginUser(self, line: bytes | None) -> object:
        """C{arg_astring}, but a missing argument is a plain syntax error."""
        if not line:
            raise IllegalClientResponse("Missing user name and password")
        return IMAP4Server.arg_astring(self, line)

    unauth_LOGIN = (do_LOGIN, arg_loginUser, IMAP4Server.arg_finalastring)

    # AUTHENTICATE

    def do_AUTHENTICATE(self, tag: bytes, line: bytes) -> None:
        args = (line or b"").split()
        if not 1 <= len(args) <= 2:
            self.sendBadResponse(tag, b"Invalid AUTHENTICATE arguments.")
            return
        name = args[0].upper().decode("ascii", "replace")
        if name not in self.mechanisms:
            self.sendNegativeResponse(tag, b"Unsupported authentication mechanism.")
            return
        mechanism = MECHANISMS[name](self._context(name), self.hostname)
        if len(args) == 1:
            self._challenge(tag, mechanism, mechanism.initial())
            return
        if not mechanism.allowsInitialResponse:
            self.sendBadResponse(tag, b"This mechanism does not take an initial response.")
            return
        data = self._decode(args[1], initial=True)
        if data is None:
            self.sendBadResponse(tag, b"Invalid base64 data in initial response.")
            return
        self._step(tag, mechanism, data)

    unauth_AUTHENTICATE = (do_AUTHENTICATE, IMAP4Server.arg_line)

    @staticmethod
    def _decode(data: bytes, initial: bool = False) -> bytes | None:
        """Strict base64 (RFC 4648); C{=} is an empty initial response (RFC 4959)."""
        if initial and data == b"=":
            return b""
        try:
            return b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            return None

    def _challenge(self, tag: bytes, mechanism: SASLMechanism, challenge: Challenge) -> None:
        self._sasl = (tag, mechanism)
        self.parseState = "sasl"
        self.sendLine(b"+ " + b64encode(challenge.data))

    def parse_sasl(self, line: bytes) -> None:
        """A continuation line of AUTHENTICATE: base64, or C{*} to cancel."""
        assert self._sasl is not None
        tag, mechanism = self._sasl
        self._sasl = None
        self.parseState = "command"
        if line.strip() == b"*":
            self.sendBadResponse(tag, b"Authentication aborted by client.")
            return
        data = self._decode(line.strip())
        if data is None:
            self.sendBadResponse(tag, b"Invalid base64 data in continued response.")
            return
        self._step(tag, mechanism, data)

    def _step(self, tag: bytes, mechanism: SASLMechanism, data: bytes) -> None:
        try:
            result = mechanism.step(data)
        except SASLError as e:
            self.sendBadResponse(tag, str(e).encode("ascii"))
            return
        except AuthorizationRefused as e:
            _log.info(
                "login user={user!r} remote={remote} mech={mechanism}: authorization refused",
                user=str(e),
                remote=mechanism.context.remoteIP,
                mechanism=mechanism.name,
            )
            self.sendNegativeResponse(tag, b"[AUTHORIZATIONFAILED] Authorization failed.")
            return
        if isinstance(result, Challenge):
            self._challenge(tag, mechanism, result)
        else:
            self._login(tag, result, mechanism.name)

    # The shared login path

    def _login(self, tag: bytes, credentials: object, mechanism: str) -> None:
        """
        Run one login. Commands pipelined behind it wait (C{self.blocked})
        until its reply is out.
        """
        self.blocked = []
        d = self.attempts.attempt(credentials, credentials.username.decode("utf-8", "replace"))  # type: ignore[attr-defined]
        self._pendingLogin = d
        d.addCallback(self._loginDone, tag, mechanism)
        d.addErrback(self._loginError, tag)
        d.addBoth(self._loginFinished)

    def _loginDone(self, outcome: Outcome, tag: bytes, mechanism: str) -> None:
        auth = "*" if self.referralAuth == "*" else mechanism
        if isinstance(outcome, LoggedIn):
            if self._lost:
                outcome.logout()
                return
            self.account = outcome.avatar
            self._onLogout = outcome.logout
            self.state = "auth"
            self.setTimeout(self.POSTAUTH_TIMEOUT)
        status, text = renderOutcome(outcome, auth, self._capabilityList)
        self._respond(status, tag, text)

    def _capabilityList(self) -> bytes:
        return b" ".join(self.listCapabilities())

    def _loginError(self, failure: Failure, tag: bytes) -> None:
        if failure.check(CancelledError) or self._lost:
            return
        _log.failure("login failed unexpectedly", failure)
        self.sendNegativeResponse(tag, UNAVAILABLE)

    def _loginFinished(self, _: object) -> None:
        self._pendingLogin = None
        if self._lost:
            self.blocked = None
        else:
            self._unblock()

    # Errors

    def lineReceived(self, line: bytes) -> None:
        """
        As Twisted's, but an unexpected error is logged with its traceback
        and the client gets a fixed text, not the exception's.
        """
        if self.blocked is not None:
            self.blocked.append(line)
            return
        self.resetTimeout()
        try:
            getattr(self, "parse_" + self.parseState)(line)
        except Exception:
            _log.failure("error while handling a command line")
            self.sendUntaggedResponse(b"BAD Internal server error.")

    # Session end

    def do_LOGOUT(self, tag: bytes) -> None:
        self.sendUntaggedResponse(b"BYE Logging out")
        self.sendPositiveResponse(tag, b"Logout completed.")
        self.transport.loseConnection()

    unauth_LOGOUT = (do_LOGOUT,)
    auth_LOGOUT = unauth_LOGOUT
    select_LOGOUT = unauth_LOGOUT
    logout_LOGOUT = unauth_LOGOUT

    def connectionLost(self, reason: Failure) -> None:
        self._lost = True
        if self._pendingLogin is not None:
            self._pendingLogin.cancel()
        super().connectionLost(reason)
