"""
L{UnixPasswordChecker}: what C{--auth unix} serves, the system's password
database without blocking the server.

Twisted's own C{unix} checker (C{twisted.plugins.cred_unix}) looks the user
up and calls C{crypt(3)} in the reactor's thread; C{crypt} holds the GIL,
so a SHA-512 hash with many rounds stops every other session for as long
as it takes (0.57 s at 400,000 rounds), and a password that is not UTF-8
raises an error that quotes it. This checker does the same lookup (C{pwd},
then the shadow file) in a thread and verifies with L{SchemeVerifier}'s
thread pool, whose SHA-crypt and MD5-crypt are libpass's own code, which
lets other threads run.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from zope.interface import implementer

from imapreferral.passwords import SchemeVerifier


def storedCrypt(name: str) -> str | None:
    """
    The user's crypt(3) value from C{pwd}, or from the shadow file when
    C{pwd} says C{x} or C{*} (readable by root only); L{None} for an
    unknown user, a locked account (C{!}, C{*}) or no password. Blocking:
    call it in a thread (NSS may ask a directory over the network).
    """
    import pwd  # at each call, as Twisted's checker: tests may stand in for it

    try:
        crypted = pwd.getpwnam(name).pw_passwd
    except KeyError:
        return None
    if crypted in ("x", "*"):
        try:
            import spwd  # deprecated (removed in Python 3.13): then pwd alone

            crypted = spwd.getspnam(name).sp_pwdp
        except (ImportError, KeyError, PermissionError):
            return None
    if not crypted or crypted.startswith(("!", "*")):
        return None
    return crypted


@implementer(ICredentialsChecker)
class UnixPasswordChecker(Service):
    """
    The system's users and passwords, checked off the reactor's thread. A
    service (the server starts and stops it with itself): it stops its
    verifier's thread pool.

    @ivar verifier: Hashes in its own thread pool.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, verifier: SchemeVerifier | None = None) -> None:
        self.verifier = verifier if verifier is not None else SchemeVerifier("CRYPT")

    def startService(self) -> None:
        super().startService()
        self.verifier.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.verifier.stopService()

    def requestAvatarId(self, credentials: object) -> Deferred[bytes]:
        return Deferred.fromCoroutine(self._check(credentials))

    async def _check(self, credentials: object) -> bytes:
        username: bytes = credentials.username  # type: ignore[attr-defined]
        crypted = await deferToThread(storedCrypt, username.decode("utf-8", "surrogateescape"))
        if crypted is None:
            raise UnauthorizedLogin()
        password: bytes = credentials.password  # type: ignore[attr-defined]
        if await self.verifier.verify("{CRYPT}" + crypted, password):
            return username
        raise UnauthorizedLogin()
