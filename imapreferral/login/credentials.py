"""
Credentials that also say where the login comes from.

They implement cred's own interfaces, so any checker accepts them; our
L{PassdbChecker} additionally reads C{context} for the passdbs.
"""

from __future__ import annotations

import hmac

from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from zope.interface import implementer

from imapreferral.login.context import LoginContext


@implementer(IUsernamePassword)
class PasswordCredentials:
    """A user name and a cleartext password (IMAP LOGIN, SASL PLAIN/LOGIN)."""

    def __init__(self, username: bytes, password: bytes, context: LoginContext) -> None:
        self.username = username
        self.password = password
        self.context = context

    def checkPassword(self, password: bytes) -> bool:
        return hmac.compare_digest(self.password, password)

    def __repr__(self) -> str:
        return f"<PasswordCredentials {self.username!r} (password hidden)>"


@implementer(IUsernameHashedPassword)
class CramMD5Credentials:
    """
    A CRAM-MD5 answer (RFC 2195): the client proves it knows the password by
    an HMAC-MD5 of our challenge; only a plaintext stored password can check it.
    """

    def __init__(
        self, username: bytes, challenge: bytes, response: bytes, context: LoginContext
    ) -> None:
        self.username = username
        self.challenge = challenge
        self.response = response
        self.context = context

    def checkPassword(self, password: bytes) -> bool:
        expected = hmac.new(password, self.challenge, "md5").hexdigest().encode("ascii")
        return hmac.compare_digest(expected, self.response.lower())

    def __repr__(self) -> str:
        return f"<CramMD5Credentials {self.username!r}>"
