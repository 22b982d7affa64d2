"""
imapreferral: RFC 2221 IMAP login referrals for Twisted.

The public API: the server factory, the checker, the realm, the passdb
interface and result type, the referral value with its URL builder, and the
errors a checker of your own raises to refer or refuse.
"""

from imapreferral.haproxy import proxyProtocolFactory
from imapreferral.imap.account import ReferralRealm
from imapreferral.imap.factory import ReferralServerFactory
from imapreferral.imap.server import ReferralIMAP4Server
from imapreferral.imap.url import IMAPURL
from imapreferral.interfaces import IPassdb, IPasswordVerifier, IReferralCarrier
from imapreferral.login.chain import CheckerChain
from imapreferral.login.checker import PassdbChecker
from imapreferral.login.context import LoginContext
from imapreferral.login.decision import decide
from imapreferral.login.errors import (
    AuthenticationFailed,
    LoginDisabled,
    LoginReferral,
    TemporaryFailure,
)
from imapreferral.login.fields import PassdbReply
from imapreferral.login.outcome import AvatarId, Referral
from imapreferral.passdbs import (
    PassdbConfigError,
    PasswdFilePassdb,
    StaticPassdb,
    passdbFromString,
)

__version__ = "0.1.0"

__all__ = [
    "IMAPURL",
    "AuthenticationFailed",
    "AvatarId",
    "CheckerChain",
    "IPassdb",
    "IPasswordVerifier",
    "IReferralCarrier",
    "LoginContext",
    "LoginDisabled",
    "LoginReferral",
    "PassdbChecker",
    "PassdbConfigError",
    "PassdbReply",
    "PasswdFilePassdb",
    "Referral",
    "ReferralIMAP4Server",
    "ReferralRealm",
    "ReferralServerFactory",
    "StaticPassdb",
    "TemporaryFailure",
    "decide",
    "passdbFromString",
    "proxyProtocolFactory",
]
