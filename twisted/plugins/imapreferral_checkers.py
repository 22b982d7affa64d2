"""
Our passdbs as C{twisted.cred.strcred} checker plugins: C{--auth
passwd-file:PATH}, C{--auth sql:CONFIG}, C{--auth static:FIELDS}, for
C{twistd imapreferral} and any other program taking C{--auth}.

Import-light, as every plugin module is imported whenever twistd lists its
plugins: imapreferral itself loads only when a checker is made.
"""

from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.cred.strcred import ICheckerFactory
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(ICheckerFactory, IPlugin)
class PassdbCheckerFactory:
    """
    A checker over one imapreferral passdb: Dovecot-style fields, so it can
    refer users (C{host}, C{nologin}) as well as log them in.
    """

    credentialInterfaces = (IUsernamePassword, IUsernameHashedPassword)

    def __init__(self, authType: str, argStringFormat: str, authHelp: str) -> None:
        self.authType = authType
        self.argStringFormat = argStringFormat
        self.authHelp = authHelp

    def generateChecker(self, argstring: str):  # type: ignore[no-untyped-def]
        from imapreferral.login.checker import PassdbChecker
        from imapreferral.passdbs import passdbFromString

        return PassdbChecker([passdbFromString(f"{self.authType}:{argstring}", option="auth")])


_PASSWD_FILE_HELP = """
Users from a Dovecot passwd-file, with {SCHEME} passwords and the
referral fields (host, port, destuser, reason, nologin, nopassword,
nodelay, proxy). The file is re-read when it changes. The same as
--passdb passwd-file:PATH.
"""

_SQL_HELP = """
Users from SQLite or PostgreSQL through Dovecot's password_query; every
other column is a passdb field. Values are bound as parameters, never
pasted into SQL. The same as --passdb sql:PATH.
"""

_STATIC_HELP = """
The same fields for every user; needs password= or nopassword. For
instance, refer everyone elsewhere without checking a password:
static:nopassword host=imap2.example.com nologin. The same as
--passdb static:FIELDS.
"""

passwdFile = PassdbCheckerFactory(
    "passwd-file",
    "Path of a Dovecot passwd-file (user:password:uid:gid:gecos:home:shell:extra_fields).",
    _PASSWD_FILE_HELP,
)
sql = PassdbCheckerFactory(
    "sql",
    "Path of a Dovecot SQL config (dovecot-sql.conf.ext: driver, connect, password_query).",
    _SQL_HELP,
)
static = PassdbCheckerFactory(
    "static",
    "Dovecot passdb fields, e.g. 'nopassword host=imap2.example.com nologin'.",
    _STATIC_HELP,
)
