"""
Embedding imapreferral in an existing Twisted application.

The application keeps its own users in its own checker; users it has moved
are referred by raising LoginReferral (or, to log in and suggest the new
server, by returning an AvatarId carrying a Referral).
"""

from twisted.application import service, strports
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import defer
from zope.interface import implementer

from imapreferral import AvatarId, LoginReferral, Referral, ReferralRealm, ReferralServerFactory


@implementer(ICredentialsChecker)
class MigrationChecker:
    """Users in C{moved} now live on imap2; everyone else logs in here."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, passwords: dict[bytes, bytes], moved: set[bytes]) -> None:
        self.passwords = passwords
        self.moved = moved

    def requestAvatarId(self, credentials):
        stored = self.passwords.get(credentials.username)
        if stored is None or not credentials.checkPassword(stored):
            return defer.fail(UnauthorizedLogin())
        user = credentials.username.decode()
        if credentials.username in self.moved:
            return defer.fail(LoginReferral(Referral(user=user, host="imap2.example.com")))
        return defer.succeed(AvatarId(username=user))


def makeReferralService(listen: str) -> service.IService:
    checker = MigrationChecker({b"alice": b"secret", b"bob": b"secret"}, moved={b"bob"})
    factory = ReferralServerFactory(Portal(ReferralRealm(), [checker]))
    return strports.service(listen, factory)


application = service.Application("my mail stack")
makeReferralService("tcp:1143:interface=127.0.0.1").setServiceParent(application)
