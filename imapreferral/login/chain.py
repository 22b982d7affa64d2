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

A chain is also a guard around checkers written elsewhere: an empty
cleartext password never reaches them (only a passdb's C{nopassword} lets
a user in without one), an answer that is not an avatar id (a coroutine
that fell off its end: C{None}) is a checker's bug, not a login, and a
checker's failure is logged by its type and where it happened, never by
its repr or its exception's message (either may quote what the checker
was given: C{--auth} arguments, the client's password).
"""

from __future__ import annotations

import copy
import traceback
from collections.abc import Sequence

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.logger import Logger
from zope.interface import implementer

from imapreferral.interfaces import IPassdb, IReferralCarrier
from imapreferral.login.checker import PassdbChecker, normaliseUsername
from imapreferral.login.errors import LoginDisabled, LoginProxied, TemporaryFailure
from imapreferral.login.immediate import Soon, askChecker, isWaiting, runNow
from imapreferral.login.outcome import AvatarId
from imapreferral.logtext import sessionSystem

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
        self._reported: set[tuple[str, ...]] = set()
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
        return maybeDeferred(self.requestAvatarIdNow, credentials)

    def requestAvatarIdNow(self, credentials: object) -> Soon:
        """
        L{requestAvatarId}, but the avatar id itself (or the refusal, raised)
        when no checker had to be waited for; see
        L{imapreferral.login.immediate}.
        """
        return runNow(self._check(credentials))

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
        session = getattr(getattr(credentials, "context", None), "session", None)
        for checker in self.checkers:
            if not any(i.providedBy(credentials) for i in checker.credentialInterfaces):
                continue
            if _emptyPassword(credentials) and not isinstance(checker, PassdbChecker):
                refused = UnauthorizedLogin("empty password")
                continue
            try:
                avatarId = askChecker(checker, credentials)
                if isWaiting(avatarId):
                    avatarId = await avatarId
            except CancelledError:
                raise  # the client went away: nobody else is asked
            except UnauthorizedLogin as e:
                if _decides(e):
                    raise
                refused = e
            except TemporaryFailure as e:
                tempfail = e.why
            except Exception as e:
                self._report(checker, type(e).__name__, e.__traceback__, session)
                tempfail = f"checker {type(checker).__name__} failed: {type(e).__name__}"
            else:
                if isinstance(avatarId, bytes | str | AvatarId) and avatarId:
                    return avatarId
                problem = f"answered {type(avatarId).__name__}, not an avatar id"
                self._report(checker, problem, None, session)
                tempfail = f"checker {type(checker).__name__} {problem}"
        if tempfail is not None:
            raise TemporaryFailure(tempfail)
        if refused is None:
            raise UnhandledCredentials(f"no checker takes {credentials!r}")
        raise refused

    def _report(self, checker: object, problem: str, where: object, session: str | None) -> None:
        """
        A checker's bug, logged once per checker type, problem and place (a
        client could otherwise repeat it into a log flood; every login
        still has its own line, with C{why=}): the checker's type, the
        exception's type and the traceback's frames, not its message.
        """
        frames = traceback.extract_tb(where) if where is not None else []  # type: ignore[arg-type]
        at = "; ".join(f"{f.filename}:{f.lineno} in {f.name}" for f in frames[-6:])
        raisedAt = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""
        key = (type(checker).__qualname__, problem, raisedAt)
        if key in self._reported:
            return
        self._reported.add(key)
        _log.error(
            "checker {checker} failed: {problem}{at} (not logged: its message and "
            "arguments, which may quote credentials; logged once per place)",
            checker=type(checker).__qualname__,
            problem=problem,
            at=f" at {at}" if at else "",
            event="checker failed",
            session=session,
            log_system=sessionSystem(_log.namespace, "error", session),
        )


def _emptyPassword(credentials: object) -> bool:
    """A cleartext login with an empty password (CRAM-MD5 has none to be empty)."""
    return IUsernamePassword.providedBy(credentials) and not getattr(credentials, "password", b"")
