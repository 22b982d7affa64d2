"""
C{--auth TYPE:ARGS}: checkers from C{twisted.cred.strcred} plugins, the way
C{twistd ftp}, C{twistd mail} and C{twistd conch} take them, with every
problem one line naming the option.

A plugin is any L{ICheckerFactory} in a C{twisted/plugins/} directory on
C{sys.path}: Twisted's C{memory}, C{file} and C{unix}, our C{passwd-file},
C{sql} and C{static}, or one of your own (README: "Write your own
checker").
"""

from __future__ import annotations

import io
import sys

import attrs
from twisted.cred.checkers import (
    FilePasswordDB,
    ICredentialsChecker,
    InMemoryUsernamePasswordDatabaseDontUse,
)
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.strcred import ICheckerFactory, findCheckerFactories
from twisted.logger import globalLogPublisher

from imapreferral.login.unixchecker import UnixPasswordChecker

#: What an IMAP login can be checked as: a cleartext password (LOGIN,
#: PLAIN, SASL LOGIN) or a challenge-response (CRAM-MD5).
SUPPORTED_INTERFACES = (IUsernamePassword, IUsernameHashedPassword)


class AuthPluginError(ValueError):
    """An C{--auth} value that cannot be used; the message says why, in one line."""


@attrs.frozen
class AuthChecker:
    """
    A checker from C{--auth}, with its type for the log (never its
    arguments: C{memory:alice:secret} holds a password).
    """

    authType: str
    checker: ICredentialsChecker

    def __repr__(self) -> str:
        return f"<--auth {self.authType}: {type(self.checker).__name__}>"


def _interfaceNames(interfaces: object) -> str:
    return ", ".join(getattr(i, "__name__", repr(i)) for i in interfaces)  # type: ignore[attr-defined]


def _factories() -> tuple[list[ICheckerFactory], list[str]]:
    """
    The installed checker factories, and the plugins that failed to import
    while they were being found (Twisted logs those and goes on).
    """
    failures: list[str] = []

    def observe(event: dict) -> None:
        failure = event.get("log_failure") or event.get("failure")  # new or legacy log
        if failure is not None:
            failures.append(_whereAndWhy(failure))

    globalLogPublisher.addObserver(observe)
    try:
        factories = list(findCheckerFactories())
    finally:
        globalLogPublisher.removeObserver(observe)
    return factories, failures


def _whereAndWhy(failure: object) -> str:
    """
    C{FILE:LINE: Error: message} for a plugin that failed to import: a
    syntax error names its own file and line (its traceback ends in
    Twisted's importer), any other error the frame it was raised in.
    """
    error = failure.value  # type: ignore[attr-defined]
    message = failure.getErrorMessage()  # type: ignore[attr-defined]
    if isinstance(error, SyntaxError) and error.filename:
        where = f"{error.filename}:{error.lineno}: "
        message = error.msg
    else:
        frames = failure.frames  # type: ignore[attr-defined]
        where = f"{frames[-1][1]}:{frames[-1][2]}: " if frames else ""
    return f"{where}{type(error).__name__}: {message}"


def findFactory(authType: str, shown: str) -> ICheckerFactory:
    """
    The installed plugin for C{authType}.

    @raise AuthPluginError: there is none; plugins that failed to import
        are named, since a typo in one's own plugin lands here.
    """
    factories, failures = _factories()
    for factory in factories:
        if factory.authType == authType:
            return factory
    known = ", ".join(
        sorted(
            f.authType
            for f in factories
            if any(i in SUPPORTED_INTERFACES for i in f.credentialInterfaces)
        )
    )
    message = f"{shown}: no checker plugin {authType!r} (installed: {known}; see --help-auth)"
    if failures:
        message += "; a plugin failed to load: " + "; ".join(failures)
    raise AuthPluginError(message)


def checkerFromString(description: str) -> AuthChecker:
    """
    Make the checker C{--auth TYPE[:ARGS]} names (C{strcred.makeChecker}
    with answers an admin can act on).

    Messages name the type, not the arguments, which may hold passwords.

    @raise AuthPluginError: the type is unknown, checks credentials IMAP
        cannot give, or its plugin refused the arguments.
    """
    authType, _, argstring = description.partition(":")
    shown = f"--auth {authType}"
    factory = findFactory(authType, shown)
    if not any(i in SUPPORTED_INTERFACES for i in factory.credentialInterfaces):
        raise AuthPluginError(
            f"{shown}: checks {_interfaceNames(factory.credentialInterfaces)} credentials; "
            f"IMAP logins need {_interfaceNames(SUPPORTED_INTERFACES)}"
        )
    warnings = io.StringIO()
    errorOutput = getattr(factory, "errorOutput", None)
    if errorOutput is not None:
        factory.errorOutput = warnings  # type: ignore[attr-defined]
    try:
        checker = factory.generateChecker(argstring)
    except Exception as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AuthPluginError(f"{shown}: {text}") from None
    finally:
        if errorOutput is not None:
            factory.errorOutput = errorOutput  # type: ignore[attr-defined]
    if not ICredentialsChecker.providedBy(checker):
        raise AuthPluginError(f"{shown}: the plugin made {checker!r}, not a credentials checker")
    _checkFile(checker, shown)
    sys.stderr.write(warnings.getvalue())
    return AuthChecker(authType, _nonBlocking(_bytesUsers(checker)))


def _checkFile(checker: object, shown: str) -> None:
    """
    Twisted's C{file:} only warns about a missing file and then fails every
    login; we refuse it at start-up, as our own passwd-file.
    """
    if isinstance(checker, FilePasswordDB):
        try:
            with open(checker.filename, "rb"):
                pass
        except OSError as e:
            raise AuthPluginError(
                f"{shown}:{checker.filename}: cannot read ({e.strerror})"
            ) from None


def _nonBlocking(checker: ICredentialsChecker) -> ICredentialsChecker:
    """
    Twisted's C{unix} checker calls C{crypt(3)} on the reactor's thread
    (which holds the GIL): we serve C{--auth unix} with the same password
    databases checked in threads (L{UnixPasswordChecker}).
    """
    if type(checker).__module__ == "twisted.plugins.cred_unix":
        return UnixPasswordChecker()
    return checker


def _bytesUsers(checker: ICredentialsChecker) -> ICredentialsChecker:
    """
    Twisted's C{memory:} plugin (C{cred_memory.py}) stores the argument's
    names and passwords as C{str}, but every protocol's credentials carry
    C{bytes}: no login could ever succeed (Twisted 26.10). We store them as
    UTF-8, as the checker's own docstring says they should be.
    """
    if isinstance(checker, InMemoryUsernamePasswordDatabaseDontUse):
        checker.users = {
            (k.encode("utf-8") if isinstance(k, str) else k): (
                v.encode("utf-8") if isinstance(v, str) else v
            )
            for k, v in checker.users.items()
        }
    return checker
