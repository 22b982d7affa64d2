"""
Dovecot passdb extra fields, parsed once into a frozen L{PassdbReply}.

Every passdb (passwd-file, static, SQL, a user's own) hands its row to
L{PassdbReply.fromFields}; nothing after this module looks at raw strings.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable

import attrs

#: Values that switch a flag on or off. Dovecot treats I{any} value, even
#: C{N} or C{0}, as set; we read the value as a boolean and refuse anything
#: else, so C{nologin=N} means what the admin wrote.
_TRUE = frozenset({"", "y", "yes", "1", "true"})
_FALSE = frozenset({"n", "no", "0", "false"})

_FLAGS = ("nologin", "nopassword", "nodelay", "proxy")

#: The flags, and every field name a passdb reply gives meaning to. Text
#: holding these outside the extra-fields column of a passwd-file is a line
#: that lost a colon (L{imapreferral.passdbs.passwdfile}).
FLAG_FIELDS = frozenset(_FLAGS)
KNOWN_FIELDS = FLAG_FIELDS | {
    "host", "port", "destuser", "reason", "user", "password",
    "proxy_maybe", "hostip", "pass", "master", "ssl", "starttls", "proxy_timeout",
    "proxy_nopipelining", "proxy_not_trusted", "source_ip",
}  # fmt: skip

#: C{ssl=} and C{starttls=}: TLS towards the backend, verified or not.
_TLS_VALUES = ("yes", "any-cert")

#: C{proxy_timeout=}: seconds, or a number with a unit as Dovecot's
#: interval settings take it (C{500ms}, C{2 min}).
_INTERVAL = re.compile(r"^(\d+(?:\.\d+)?)\s*([a-z]*)$")
_UNIT_SECONDS = {
    **dict.fromkeys(("", "s", "sec", "secs", "second", "seconds"), 1.0),
    **dict.fromkeys(("ms", "msec", "msecs", "millisecond", "milliseconds"), 0.001),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60.0),
}


class FieldError(ValueError):
    """
    A passdb field whose value cannot mean anything (C{port=http},
    C{nologin=maybe}). The message names the field; callers add file and line.
    """


def parseFlag(key: str, value: str | None) -> bool:
    """
    Read a Dovecot boolean field: a bare flag or C{y}/C{yes}/C{1}/C{true}
    is set, C{n}/C{no}/C{0}/C{false} is not (case-insensitive).

    @raise FieldError: for any other value.
    """
    if value is None:
        return True
    folded = value.strip().lower()
    if folded in _TRUE:
        return True
    if folded in _FALSE:
        return False
    raise FieldError(f"{key}={value!r} is not a boolean (use y/yes/1/true or n/no/0/false)")


def parsePort(value: str | None) -> int | None:
    """
    Read C{port=}: a decimal 0..65535. C{0} means "the default" as in Dovecot.

    @raise FieldError: for anything else.
    """
    if value is None or value.strip() == "":
        return None
    text = value.strip()
    if not text.isascii() or not text.isdigit() or int(text) > 65535:
        raise FieldError(f"port={value!r} is not a port number (0-65535)")
    port = int(text)
    return port or None


def parseAddress(key: str, value: str | None) -> str:
    """
    Read an IP address field (C{hostip}, C{source_ip}): IPv4 or IPv6, with
    or without brackets, returned in its compressed form.

    @raise FieldError: for a name or anything else that is not an address.
    """
    text = (value or "").strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise FieldError(f"{key}={value!r} is not an IP address") from None


def parseTLS(key: str, value: str | None) -> str | None:
    """
    Read C{ssl=} or C{starttls=}: C{yes} (verify the backend's certificate)
    or C{any-cert} (do not); a false boolean means off (L{None}).

    @raise FieldError: for anything else (C{ssl=maybe}).
    """
    folded = "yes" if value is None else value.strip().lower()
    if folded in _TLS_VALUES:
        return folded
    if folded in _TRUE:
        return "yes"
    if folded in _FALSE:
        return None
    raise FieldError(f"{key}={value!r} is not one of yes, any-cert, no")


def parseInterval(key: str, value: str | None) -> float:
    """
    Read C{proxy_timeout=}: seconds (C{30}), or with a unit (C{500ms},
    C{2 min}); it must be above zero.

    @raise FieldError: for anything else.
    """
    match = _INTERVAL.match((value or "").strip().lower())
    factor = _UNIT_SECONDS.get(match.group(2)) if match else None
    seconds = float(match.group(1)) * factor if match and factor else 0.0
    if seconds <= 0:
        raise FieldError(f"{key}={value!r} is not a time interval above zero (seconds)")
    return seconds


def _text(key: str, value: str | None) -> str:
    return value or ""


#: Dovecot's proxy fields: the L{ProxyFields} attribute and the parser.
#: C{forward_<key>} fields are collected apart.
_PROXY_FIELDS: dict[str, tuple[str, Callable[[str, str | None], object]]] = {
    "proxy_nopipelining": ("nopipelining", parseFlag),
    "proxy_not_trusted": ("notTrusted", parseFlag),
    "ssl": ("ssl", parseTLS),
    "starttls": ("starttls", parseTLS),
    "hostip": ("hostip", parseAddress),
    "source_ip": ("sourceIP", parseAddress),
    "proxy_timeout": ("timeout", parseInterval),
    "pass": ("password", _text),
    "master": ("master", _text),
}
_FORWARD = "forward_"


def splitExtraFields(text: str) -> list[tuple[str, str | None]]:
    """
    Split Dovecot's space-separated extra fields: C{key=value} or a bare
    C{key}. As in Dovecot's passwd-file, a value stops at the first space
    (C{reason=Custom text} gives C{reason=Custom} and a flag C{text}).
    """
    fields: list[tuple[str, str | None]] = []
    for token in text.split():
        key, sep, value = token.partition("=")
        fields.append((key, value if sep else None))
    return fields


#: A field whose value is a secret: a stored password (C{password=}) or a
#: proxy backend's (C{pass=}).
_SECRET_FIELD = re.compile(r"(?i)(\b(?:password|pass)=)\S*")


def redactSecretFields(text: str) -> str:
    """
    C{text} (fields as an option gave them: C{--passdb static:...},
    C{--local-backend ...}) with every C{password=} and C{pass=} value
    replaced by C{***}, for messages that echo the option.
    """
    return _SECRET_FIELD.sub(r"\1***", text)


def _redactedPassword(password: str | None) -> str:
    """A stored password in a repr: the scheme, never the value."""
    if password is None:
        return "None"
    scheme, brace, _ = password.partition("}")
    return repr((scheme + brace if password.startswith("{") and brace else "") + "***")


@attrs.frozen
class ProxyFields:
    """
    How to reach and log in to a proxy backend: Dovecot's proxy fields
    beyond C{host}, C{port} and C{destuser}, which L{PassdbReply} holds.

    @ivar hostip: The address to connect to, so C{host} need not be
        resolved; C{host} still names the backend for certificate checks.
    @ivar password: C{pass}: the backend password, or L{None} to use the
        one the client gave. Never shown in a repr.
    @ivar master: A master user to log in to the backend as, on behalf of
        the destination user (C{AUTHENTICATE PLAIN}, authzid = destuser).
    @ivar ssl: C{yes} or C{any-cert}: implicit TLS to the backend.
    @ivar starttls: C{yes} or C{any-cert}: STARTTLS to the backend.
    @ivar timeout: C{proxy_timeout}, seconds from connect to the tagged
        login reply, or L{None} for the default.
    @ivar nopipelining: Wait for each backend reply before the next command.
    @ivar notTrusted: Send the backend no C{ID} with the client's address.
    @ivar sourceIP: The local address to connect from.
    @ivar forward: C{forward_<key>} fields, sent as ID C{x-forward-<key>}.
    """

    hostip: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    master: str | None = None
    ssl: str | None = None
    starttls: str | None = None
    timeout: float | None = None
    nopipelining: bool = False
    notTrusted: bool = False
    sourceIP: str | None = None
    forward: tuple[tuple[str, str], ...] = ()


def _checkHostIP(host: str | None, hostip: str | None) -> None:
    """
    Dovecot: when C{host} and C{hostip} are both addresses they must agree.

    @raise FieldError: when they do not.
    """
    if host is None or hostip is None:
        return
    try:
        address = parseAddress("host", host)
    except FieldError:
        return
    if address != hostip:
        raise FieldError(f"host={host!r} and hostip={hostip!r} are different addresses")


@attrs.frozen
class PassdbReply:
    """
    One passdb's answer for one user, with Dovecot's fields given meaning.

    @ivar password: The stored password, possibly with a C{{SCHEME}} prefix,
        or L{None} when the passdb holds none. Its repr shows only the scheme
        (C{'{BLF-CRYPT}***'}): replies end up in logs and tracebacks.
    @ivar user: A rewritten user name (Dovecot's C{user} field), or L{None}.
    @ivar host: The referral or proxy destination; C{""} when the passdb
        returned an empty C{host=}, L{None} when it returned none.
    @ivar port: The destination port; L{None} for the default (143).
    @ivar destuser: The user name to give the client for the other server,
        or L{None} to use the login name.
    @ivar reason: Text to replace the default reply text, or L{None}.
    @ivar proxyMaybe: C{proxy_maybe}: proxy unless C{host} and C{port}
        point at this server, in which case log in here.
    @ivar proxyFields: How to reach and log in to a proxy backend.
    @ivar extra: Every other field, in order, C{(key, value-or-None)}.
    """

    password: str | None = attrs.field(default=None, repr=_redactedPassword)
    user: str | None = None
    host: str | None = None
    port: int | None = None
    destuser: str | None = None
    reason: str | None = None
    nologin: bool = False
    nopassword: bool = False
    nodelay: bool = False
    proxy: bool = False
    proxyMaybe: bool = False
    proxyFields: ProxyFields = ProxyFields()
    extra: tuple[tuple[str, str | None], ...] = ()

    @classmethod
    def fromFields(
        cls, fields: Iterable[tuple[str, str | None]], password: str | None = None
    ) -> PassdbReply:
        """
        Build a reply from C{(key, value)} pairs as a passdb returns them.

        C{value} L{None} is a bare flag (or SQL NULL for non-flag fields,
        which then counts as absent). C{userdb_*} fields belong to the userdb
        and are dropped. A C{password} field overrides C{password}.

        @raise FieldError: when a flag or port value is meaningless.
        """
        values: dict[str, object] = {}
        proxyValues: dict[str, object] = {}
        forward: list[tuple[str, str]] = []
        extra: list[tuple[str, str | None]] = []
        for rawKey, value in fields:
            key = rawKey.strip().lower()
            if not key or key.startswith("userdb_"):
                continue
            if key in _PROXY_FIELDS:
                name, parse = _PROXY_FIELDS[key]
                if value is not None or parse in (parseFlag, parseTLS):
                    proxyValues[name] = parse(key, value)
            elif key.startswith(_FORWARD) and key != _FORWARD:
                if value is not None:
                    forward.append((key[len(_FORWARD) :], value))
            elif key in _FLAGS:
                values[key] = parseFlag(key, value)
            elif key == "proxy_maybe":
                values["proxyMaybe"] = parseFlag(key, value)
            elif key == "port":
                values["port"] = parsePort(value)
            elif key in ("host", "destuser", "reason", "user"):
                if value is not None:
                    values[key] = value
            elif key == "password":
                password = value
            else:
                extra.append((key, value))
        if proxyValues or forward:
            _checkHostIP(values.get("host"), proxyValues.get("hostip"))  # type: ignore[arg-type]
            values["proxyFields"] = ProxyFields(forward=tuple(forward), **proxyValues)  # type: ignore[arg-type]
        return cls(password=password, extra=tuple(extra), **values)  # type: ignore[arg-type]
