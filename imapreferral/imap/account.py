"""
The realm: turns an avatar id into an IMAP account, carrying the referral
for the log-in-anyway case (C{OK [REFERRAL ...]}).

This release has no mail store: the default account is Twisted's in-memory
C{MemoryAccount} with no mailboxes. Pass C{accountFactory} to serve real
mail.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.cred.portal import IRealm
from twisted.mail.imap4 import IAccount, MailboxException, MemoryAccount
from twisted.python.components import proxyForInterface
from zope.interface import implementer

from imapreferral.interfaces import IReferralCarrier
from imapreferral.login.outcome import Referral


class EmptyAccount(MemoryAccount):
    """
    An account with no mailboxes that refuses to create any. C{username}
    is the name the passdb settled on (its C{user} field, else the login
    name): what a C{--local-backend} login uses.
    """

    @property
    def username(self) -> str:
        return self.name

    def _emptyMailbox(self, name: str, id: int) -> Any:
        raise MailboxException("No mail store on this server.")


@implementer(IReferralCarrier)
class SuggestingAccount(proxyForInterface(IAccount, "account")):  # type: ignore[misc]
    """
    An account that also carries the referral to suggest. Other interfaces
    the wrapped account provides (C{INamespacePresenter}, ...) still adapt.
    """

    def __init__(self, account: IAccount, referral: Referral) -> None:
        self.account = account
        self.referral = referral
        if hasattr(account, "username"):
            self.username = account.username

    def __conform__(self, interface: Any) -> Any:
        return interface(self.account, None)


def _nameOf(avatarId: object) -> str:
    name = getattr(avatarId, "username", avatarId)
    if isinstance(name, bytes):
        return name.decode("utf-8", "surrogateescape")
    return str(name)


@implementer(IRealm)
class ReferralRealm:
    """
    @ivar accountFactory: Makes the C{IAccount} for a user name; defaults to
        a fresh L{EmptyAccount} per login.
    """

    def __init__(self, accountFactory: Callable[[str], IAccount] | None = None) -> None:
        self.accountFactory = accountFactory if accountFactory is not None else EmptyAccount

    def requestAvatar(self, avatarId: object, mind: object, *interfaces: Any) -> tuple:
        if IAccount not in interfaces:
            raise NotImplementedError("ReferralRealm only provides IMAP accounts")
        account = self.accountFactory(_nameOf(avatarId))
        carrier = IReferralCarrier(avatarId, None)
        if carrier is not None and carrier.referral is not None:
            account = SuggestingAccount(account, carrier.referral)
        return IAccount, account, lambda: None
