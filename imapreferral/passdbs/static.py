"""
The static passdb: the same fields for every user, no database. The seed's
"forward all users to another server" case:
C{static:host=imap2.example.com nologin nopassword nodelay}.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from imapreferral.interfaces import IPassdb
from imapreferral.login.context import LoginContext
from imapreferral.login.fields import FieldError, PassdbReply, splitExtraFields
from imapreferral.passwords import allowsCramMD5


@implementer(IPassdb)
class StaticPassdb:
    """Answers every lookup with C{reply}."""

    def __init__(self, reply: PassdbReply) -> None:
        self.reply = reply

    @classmethod
    def fromString(cls, text: str) -> StaticPassdb:
        """
        Parse Dovecot-style C{key=value} and bare flags; C{password=} sets a
        shared password. As Dovecot's static passdb says, one of
        C{password=} or C{nopassword} is needed: without either no one
        could ever log in, and the passdb would only hide a typo.

        @raise imapreferral.login.fields.FieldError: for a meaningless value,
            or neither C{password=} nor C{nopassword}.
        """
        reply = PassdbReply.fromFields(splitExtraFields(text))
        if reply.password is None and not reply.nopassword:
            raise FieldError("needs password= or nopassword, else no one can log in")
        return cls(reply)

    def __repr__(self) -> str:
        return f"<StaticPassdb host={self.reply.host!r}>"

    def lookup(self, username: str, context: LoginContext) -> Deferred[PassdbReply | None]:
        return succeed(self.reply)

    def canProvidePlaintext(self) -> bool:
        return self.reply.password is not None and allowsCramMD5(self.reply.password)
