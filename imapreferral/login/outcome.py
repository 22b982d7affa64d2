"""
Immutable values for what a login comes to.

L{decide} returns one of L{Accept}, L{Refer}, L{Disable}, L{Reject},
L{Unavailable}, L{Proxy}; the login attempt turns an accepted login into
L{LoggedIn}, which carries the avatar, and a proxy decision into
L{ProxyLogin}, which carries the backend destination. A login refused
before any check is L{PrivacyRequired} or L{AuthorizationRefused}.
Protocol layers render these and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from zope.interface import implementer

from imapreferral.interfaces import IReferralCarrier


@attrs.frozen
class Referral:
    """
    Where to send a client instead, as the passdb said (RFC 2221).

    @ivar user: The user name for the other server (C{destuser}, else the
        login name after normalisation). May be empty: Dovecot allows
        C{destuser=''}.
    @ivar host: Host name or address literal, without brackets.
    @ivar port: Port, or L{None} for the protocol default.
    @ivar reason: Text to show instead of the default, or L{None}.
    """

    user: str
    host: str
    port: int | None = None
    reason: str | None = None


@implementer(IReferralCarrier)
@attrs.frozen
class AvatarId:
    """
    The avatar id L{PassdbChecker} returns: who logged in and, for the
    log-in-anyway case, the referral to suggest.

    Realms that only want a name can use L{username}; ours attaches the
    referral to the account so the IMAP layer can answer C{OK [REFERRAL]}.
    """

    username: str
    referral: Referral | None = None


@attrs.frozen
class Accept:
    """Log in locally; suggest C{referral} if there is one."""

    user: str
    referral: Referral | None = None


@attrs.frozen
class Refer:
    """
    Do not log in; send the client to C{referral} (C{host} + C{nologin}).

    @ivar verified: Whether a password was checked. A C{nopassword}
        referral proves nothing about the client, so it must not clear the
        address's authentication penalty.
    """

    referral: Referral
    verified: bool = True


@attrs.frozen
class Disable:
    """C{nologin} without C{host}: the account exists but may not log in."""

    reason: str | None = None


@attrs.frozen
class Reject:
    """
    Wrong password or unknown user: one answer for both, after the failure
    delay unless the passdb said C{nodelay}.
    """

    nodelay: bool = False


@attrs.frozen
class Unavailable:
    """A temporary failure: passdb down, bad passdb data, proxying missing."""

    why: str


@attrs.frozen
class Proxy:
    """C{proxy}: relay the session to C{host} (Dovecot: proxy beats host)."""

    host: str
    port: int | None
    user: str


#: How the front reaches a proxy backend: plain TCP, implicit TLS
#: (C{ssl=yes}), or STARTTLS after the greeting (C{starttls=yes}).
PLAIN, IMPLICIT_TLS, STARTTLS = "plain", "tls", "starttls"


@attrs.frozen
class ProxyDestination:
    """
    Everything needed to log a user in to a proxy backend, from the passdb
    fields and the client's credentials (see
    L{imapreferral.login.destination.proxyDestination}).

    @ivar host: The backend's name (or address): what certificates are
        checked against and what logs show.
    @ivar port: The backend port, defaults applied (143, or 993 for TLS).
    @ivar user: The backend user (C{destuser}, else the login name).
    @ivar password: The backend password (C{pass}, else the client's).
        Never shown in a repr.
    @ivar master: Log in as this master user for C{user}, or L{None}.
    @ivar hostip: Connect here instead of resolving C{host}.
    @ivar tls: L{PLAIN}, L{IMPLICIT_TLS} or L{STARTTLS}.
    @ivar verifyCertificate: Check the backend's certificate against
        C{host}; false for C{any-cert}.
    @ivar timeout: Seconds from connecting to the tagged login reply.
    @ivar pipelining: Send C{ID} and the login in one write.
    @ivar sendID: Tell the backend the client's address with C{ID}
        (C{proxy_not_trusted} turns it off).
    @ivar sourceIP: The local address to connect from, or L{None}.
    @ivar forward: C{forward_<key>} fields for ID C{x-forward-<key>}.
    """

    host: str
    port: int
    user: str
    password: str = attrs.field(repr=False)
    master: str | None = None
    hostip: str | None = None
    tls: str = PLAIN
    verifyCertificate: bool = True
    timeout: float = 30.0
    pipelining: bool = True
    sendID: bool = True
    sourceIP: str | None = None
    forward: tuple[tuple[str, str], ...] = ()

    @property
    def address(self) -> str:
        """C{host:port} (IPv6 in brackets) for log lines."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@attrs.frozen
class LoggedIn:
    """
    A login that succeeded: the avatar the realm gave, its logout callable
    and the referral to suggest, if any.
    """

    avatar: Any
    logout: Callable[[], None]
    user: str
    referral: Referral | None = None


@attrs.frozen
class ProxyLogin:
    """
    Log the user in to a backend and relay the session there (C{proxy}).

    @ivar destination: Where and with what credentials.
    @ivar verified: Whether the front checked the password. With
        C{nopassword} it did not: the backend's answer is what counts, so
        only a backend login clears the address's penalty.
    @ivar referral: For a local login proxied to C{--local-backend}: the
        referral to suggest in the tagged OK, if any.
    @ivar insteadOf: The referral this proxying replaces (C{--referral-mode
        proxy}, or C{auto} for a client that does not follow referrals),
        or L{None}: the passdb said C{proxy}.
    """

    destination: ProxyDestination
    verified: bool = True
    referral: Referral | None = None
    insteadOf: Referral | None = None


@attrs.frozen
class PrivacyRequired:
    """
    A plaintext mechanism on a connection that is neither TLS nor from a
    trusted network (Dovecot's C{disable_plaintext_auth}): refused before
    any password is checked.
    """


@attrs.frozen
class PlaintextUnavailable:
    """
    A cleartext password (the LOGIN command) where no passdb or checker
    takes one (a challenge-response-only C{--auth} checker): it could never
    succeed, so it is refused before anything is checked, and the
    capabilities say C{LOGINDISABLED}.
    """


@attrs.frozen
class AuthorizationRefused:
    """
    SASL PLAIN asked to act as another user (an authzid other than the
    authcid). We have no master users, so this is refused without checking
    anything.

    @ivar user: The authentication identity (non-UTF-8 bytes as surrogates).
    @ivar authzid: The identity it asked to act as.
    """

    user: str
    authzid: str


Decision = Accept | Refer | Disable | Reject | Unavailable | Proxy
Outcome = (
    LoggedIn
    | Refer
    | Disable
    | Reject
    | Unavailable
    | ProxyLogin
    | PrivacyRequired
    | AuthorizationRefused
)
