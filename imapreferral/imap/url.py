"""
RFC 5092 IMAP URLs for login referrals: C{imap://user;AUTH=mech@host:port/}.

The safe sets are built from the RFCs' ABNF; everything else is
%-encoded byte by byte in lower-case hex, as Dovecot's C{imap_url_create}
does. Unlike Dovecot we bracket IPv6 literals (RFC 3986 §3.2.2), so the URL
stays a URL.
"""

from __future__ import annotations

import socket
import string

import attrs

from imapreferral.login.outcome import Referral

#: RFC 3986 §2.3 unreserved.
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
#: RFC 3986 §2.2 sub-delims.
_SUB_DELIMS = frozenset("!$&'()*+,;=")
#: RFC 5092 §11: sub-delims-sh = "!" / "$" / "'" / "(" / ")" / "*" / "+" / ","
_SUB_DELIMS_SH = frozenset("!$'()*+,")
#: RFC 5092 §11: achar = uchar / "&" / "=" / "~"; uchar = unreserved /
#: pct-encoded / sub-delims-sh. Used for enc-user and enc-auth-type.
_ACHAR = _UNRESERVED | _SUB_DELIMS_SH | frozenset("&=~")
#: RFC 3986 §3.2.2: reg-name = *( unreserved / pct-encoded / sub-delims ).
_REG_NAME = _UNRESERVED | _SUB_DELIMS

DEFAULT_PORT = 143


def _quoteMap(safe: frozenset[str]) -> tuple[str, ...]:
    return tuple(chr(b) if chr(b) in safe else f"%{b:02x}" for b in range(256))


_ACHAR_MAP = _quoteMap(_ACHAR)
_REG_NAME_MAP = _quoteMap(_REG_NAME)


def _encode(text: str, quoteMap: tuple[str, ...]) -> str:
    raw = text.encode("utf-8", "surrogateescape")
    return "".join([quoteMap[b] for b in raw])


def encodeAchar(text: str) -> str:
    """%-encode C{text} as RFC 5092 C{1*achar} (user names, AUTH types)."""
    return _encode(text, _ACHAR_MAP)


def _isIPv6(text: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6, text)
    except (OSError, ValueError):
        return False
    return True


def formatHost(host: str) -> str:
    """
    The URL form of a host: IPv6 literals in brackets (given with or without
    them), anything else as an RFC 3986 reg-name, %-encoded where needed.
    """
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if _isIPv6(bare):
        return f"[{bare.lower()}]"
    return _encode(host, _REG_NAME_MAP)


@attrs.frozen
class IMAPURL:
    """
    A server-only IMAP URL as a login referral uses it (RFC 5092 C{imapurl}
    with C{iserver} and an empty path). Alpine follows exactly this form:
    user present, trailing C{/}, nothing after it.

    @ivar user: The user name, unencoded.
    @ivar host: Host name or address, unencoded, IPv6 with or without brackets.
    @ivar port: The port; L{None}, 0 or 143 are left out of the text.
    @ivar auth: The SASL mechanism for C{;AUTH=}, or C{*} for "any".
    """

    user: str
    host: str
    port: int | None = None
    auth: str = "*"

    @classmethod
    def fromReferral(cls, referral: Referral, auth: str) -> IMAPURL:
        return cls(user=referral.user, host=referral.host, port=referral.port, auth=auth)

    def asText(self) -> str:
        auth = "*" if self.auth == "*" else encodeAchar(self.auth)
        port = "" if self.port in (None, 0, DEFAULT_PORT) else f":{self.port}"
        return f"imap://{encodeAchar(self.user)};AUTH={auth}@{formatHost(self.host)}{port}/"

    def __str__(self) -> str:
        return self.asText()


def _decode(text: str) -> str:
    """Undo %-encoding (RFC 3986 §2.1), as UTF-8; bad escapes are errors."""
    if "%" not in text:
        return text
    raw, rest = bytearray(), text
    while "%" in rest:
        before, _, after = rest.partition("%")
        escape = after[:2]
        if len(escape) != 2 or not all(c in string.hexdigits for c in escape):
            raise ValueError(f"bad %-escape in {text!r}")
        raw += before.encode() + bytes([int(escape, 16)])
        rest = after[2:]
    return (raw + rest.encode()).decode("utf-8", "surrogateescape")


def parseServerURL(text: str) -> IMAPURL:
    """
    Read an RFC 5092 C{imap://[user[;AUTH=mech]@]host[:port][/...]} URL as
    a backend's C{NO [REFERRAL ...]} sends it; what follows the server part
    is ignored. An absent user is C{""}.

    @raise ValueError: for anything that is not such a URL.
    """
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() != "imap":
        raise ValueError(f"not an imap:// URL: {text!r}")
    authority = rest.split("/", 1)[0]
    userinfo, at, hostport = authority.rpartition("@")
    user, _, auth = userinfo.partition(";")
    if auth and not auth.upper().startswith("AUTH="):
        raise ValueError(f"bad user part in {text!r}")
    if hostport.startswith("["):
        host, bracket, portText = hostport[1:].partition("]")
        if not bracket or not _isIPv6(host) or (portText and not portText.startswith(":")):
            raise ValueError(f"bad IPv6 host in {text!r}")
        portText = portText[1:]
    else:
        host, _, portText = hostport.partition(":")
        host = _decode(host)
    if not host or (portText and not (portText.isascii() and portText.isdigit())):
        raise ValueError(f"bad host or port in {text!r}")
    port = int(portText) if portText else None
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"bad port in {text!r}")
    return IMAPURL(
        user=_decode(user) if at else "", host=host, port=port, auth=_decode(auth[5:]) or "*"
    )
