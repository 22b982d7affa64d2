"""
L{CheckerChain}: several C{twisted.cred} checkers consulted in order, as
C{--passdb} and C{--auth} give them.

A C{Portal} keeps one checker per credentials interface, so two checkers
for C{IUsernamePassword} cannot both be asked; this one checker asks them
in turn, with the rule L{PassdbChecker} applies between passdbs (and
Dovecot between C{passdb} blocks): an unknown user or a wrong password (a
plain C{UnauthorizedLogin}) goes on to the next checker; the first that
logs the user in, refers, proxies or disables decides. A checker that fails
otherwise (down, or a bug) is skipped; if no later checker decides, the
login is a temporary failure, not a wrong password.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from imapreferral.interfaces import IPassdb, IReferralCarrier
from imapreferral.login.checker import normaliseUsername
from imapreferral.login.errors import LoginDisabled, LoginProxied, TemporaryFailure

_log = Logger()


def canCheckChallenges(source: object) -> bool:
    """
    Whether C{source}, an L{IPassdb} or a checker, can check a
    challenge-response login (CRAM-MD5, C{IUsernameHashedPassword}): a
    passdb must be able to hold plaintext passwords; a checker must take
    those credentials and, if it can tell (C{canProvidePlaintext}), hold
    plaintext. Twisted's C{memory:} and C{file:} checkers can.
    """
    if IPassdb.providedBy(source):
        return bool(source.canProvidePlaintext())  # type: ignore[attr-defined]
    if IUsernameHashedPassword not in getattr(source, "credentialInterfaces", ()):
        return False
    return bool(getattr(source, "canProvidePlaintext", lambda: True)())


def canCheckPasswords(source: object) -> bool:
    """Whether C{source} can check a cleartext password (LOGIN, PLAIN, SASL LOGIN)."""
    return IPassdb.providedBy(source) or IUsernamePassword in getattr(
        source, "credentialInterfaces", ()
    )


def _decides(error: UnauthorizedLogin) -> bool:
    """A referral, a disabled login or a proxy ends the search; a plain failure does not."""
    return IReferralCarrier.providedBy(error) or isinstance(error, LoginDisabled | LoginProxied)


@implementer(ICredentialsChecker)
class CheckerChain:
    """
    Checkers consulted in order; see the module docstring.

    Each checker is given the credentials only if it takes their interface
    (a checker of C{IUsernamePassword} alone never sees a CRAM-MD5 login),
    and with the user name normalised as for passdbs (lower-cased unless
    C{lowercaseUsernames} is false), so C{ALICE} is C{alice} to every
    checker.

    @ivar checkers: The C{ICredentialsChecker}s, in order.
    """

    def __init__(self, checkers: Sequence[ICredentialsChecker], lowercaseUsernames: bool = True):
        if not checkers:
            raise ValueError("CheckerChain needs at least one checker")
        self.checkers = tuple(checkers)
        self.lowercaseUsernames = lowercaseUsernames
        interfaces: dict[object, None] = {}
        for checker in self.checkers:
            interfaces.update(dict.fromkeys(checker.credentialInterfaces))
        self.credentialInterfaces = tuple(interfaces)

    def canProvidePlaintext(self) -> bool:
        """Whether CRAM-MD5 can ever work: some checker can check it (L{canCheckChallenges})."""
        return any(canCheckChallenges(checker) for checker in self.checkers)

    def requestAvatarId(self, credentials: object) -> Deferred[object]:
        return Deferred.fromCoroutine(self._check(credentials))

    def _normalised(self, credentials: object) -> object:
        username = getattr(credentials, "username", None)
        if not isinstance(username, bytes):
            return credentials
        name = normaliseUsername(username, self.lowercaseUsernames)
        renamed = name.encode("utf-8", "surrogateescape")
        if renamed == username:
            return credentials
        credentials = copy.copy(credentials)
        credentials.username = renamed  # type: ignore[attr-defined]
        return credentials

    async def _check(self, credentials: object) -> object:
        credentials = self._normalised(credentials)
        refused: UnauthorizedLogin | None = None
        tempfail: str | None = None
        for checker in self.checkers:
            if not any(i.providedBy(credentials) for i in checker.credentialInterfaces):
                continue
            try:
                return await maybeDeferred(checker.requestAvatarId, credentials)
            except CancelledError:
                raise  # the client went away: nobody else is asked
            except UnauthorizedLogin as e:
                if _decides(e):
                    raise
                refused = e
            except TemporaryFailure as e:
                tempfail = e.why
            except Exception as e:
                # A checker of someone's own failing: its author wants the traceback.
                _log.failure("checker {checker!r} failed", Failure(), checker=checker)
                tempfail = f"checker {checker!r} failed: {e!r}"
        if tempfail is not None:
            raise TemporaryFailure(tempfail)
        if refused is None:
            raise UnhandledCredentials(f"no checker takes {credentials!r}")
        raise refused
