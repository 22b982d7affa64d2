"""
L{ServerPolicy}: everything a listener decides about its connections,
as one immutable value the factory hands to each protocol.
"""

from __future__ import annotations

import re
import socket
from typing import Any

import attrs

from imapreferral.login.client import DEFAULT_REFERRAL_CLIENT_NAMES
from imapreferral.login.fields import PassdbReply
from imapreferral.networks import LOOPBACK, NetworkList

PLAINTEXT_AUTH_CHOICES = ("secure", "always")

#: RFC 5092 achar and RFC 3986 reg-name characters, with %XX escapes.
_ACHARS = r"(?:[A-Za-z0-9\-._~!$&'()*+,=]|%[0-9A-Fa-f]{2})"
_REG_NAME = r"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+"
#: RFC 2221 §4.2 greeting referrals name a server, optionally a user:
#: imap://[user[;AUTH=mech]@]host[:port]/ (RFC 5092 iserver, empty path).
_SERVER_URL = re.compile(
    rf"imap://(?:{_ACHARS}*(?:;AUTH=(?:\*|{_ACHARS}+))?@)?"
    rf"(?P<host>\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|{_REG_NAME})(?::(?P<port>[0-9]{{1,5}}))?/"
)


def validateServerURL(url: str) -> str:
    """
    Check a greeting-referral URL: C{imap://host[:port]/}, optionally with
    a user. Alpine, the only client that follows referrals, wants the
    trailing C{/} and nothing after it.

    @raise ValueError: saying what the URL must look like.
    """
    match = _SERVER_URL.fullmatch(url)
    valid = match is not None
    if match and match["port"] is not None:
        valid = 0 < int(match["port"]) <= 65535
    if match and match["ipv6"] is not None:
        try:
            socket.inet_pton(socket.AF_INET6, match["ipv6"])
        except OSError:
            valid = False
    if not valid:
        raise ValueError(
            f"{url!r} is not an IMAP server URL such as imap://imap2.example.com/ "
            "or imap://imap2.example.com:1143/"
        )
    return url


@attrs.frozen
class ServerPolicy:
    """
    @ivar mechanisms: SASL mechanisms offered (over secured connections).
    @ivar passwordsCheckable: Whether any checker takes a cleartext password;
        if none does, the LOGIN command is disabled (C{LOGINDISABLED}).
    @ivar referralAuth: C{"mech"} or C{"*"}: what C{;AUTH=} says.
    @ivar greeting: Text of the C{* OK} greeting (already sanitised).
    @ivar hostname: For CRAM-MD5 challenges.
    @ivar tlsContext: A context factory for STARTTLS, or L{None}.
    @ivar trustedNetworks: Clients here may log in without TLS and are
        exempt from per-IP limits and penalties (Dovecot's
        C{login_trusted_networks}); loopback by default.
    @ivar plaintextAuth: C{"secure"} (Dovecot's C{disable_plaintext_auth =
        yes}: plaintext mechanisms only over TLS or from trusted networks)
        or C{"always"}.
    @ivar greetingReferral: When set, every connection gets C{* BYE
        [REFERRAL url] reason} and is closed (RFC 2221 §4.2).
    @ivar greetingReferralReason: The text after the referral.
    @ivar maxBadCommands: Pre-login BAD replies before C{* BYE} (Dovecot: 10).
    @ivar maxAuthFailures: Failed authentications per connection before C{* BYE}.
    @ivar preauthIdle: Seconds a pre-login connection may stay silent.
    @ivar preauthLifetime: Seconds a connection may stay unauthenticated at all.
    @ivar maxLineLength: Longest command line before C{* BYE}.
    @ivar outputBuffer: Unread output (bytes) beyond which we stop reading
        from a pre-login client.
    @ivar idFields: What we answer to C{ID} (RFC 2971).
    @ivar localBackend: Where a login that succeeds here is proxied
        (C{--local-backend}, static passdb fields: C{host}, C{port},
        C{starttls}, C{master}, C{pass}, ...), or L{None} for the realm's
        account.
    @ivar referralClientNames: Lower-case C{ID} names of clients that
        follow referrals (C{--referral-client-names}); see
        L{imapreferral.login.client.recogniseClient}.
    """

    mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN")
    passwordsCheckable: bool = True
    referralAuth: str = "mech"
    greeting: bytes = b"imapreferral ready."
    hostname: str = "imapreferral"
    tlsContext: Any = None
    trustedNetworks: NetworkList = attrs.field(factory=lambda: NetworkList.fromStrings(LOOPBACK))
    plaintextAuth: str = "secure"
    greetingReferral: str | None = None
    greetingReferralReason: str = "This server is being decommissioned, use the other one."
    maxBadCommands: int = 10
    maxAuthFailures: int = 5
    preauthIdle: float = 60.0
    preauthLifetime: float = 300.0
    maxLineLength: int = 16384
    outputBuffer: int = 256 * 1024
    idFields: tuple[tuple[str, str], ...] = (("name", "imapreferral"),)
    localBackend: PassdbReply | None = None
    referralClientNames: tuple[str, ...] = attrs.field(
        default=DEFAULT_REFERRAL_CLIENT_NAMES,
        converter=lambda names: tuple(name.strip().lower() for name in names if name.strip()),
    )
    #: Greeting lines already made, by what they depend on besides the
    #: policy (see C{ReferralIMAP4Server.sendServerGreeting}): not a setting.
    greetings: dict[tuple[bool, bool, bool], bytes] = attrs.field(
        factory=dict, eq=False, repr=False, init=False
    )
