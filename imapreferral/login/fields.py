"""
Dovecot passdb extra fields, parsed once into a frozen L{PassdbReply}.

Every passdb (passwd-file, static, SQL, a user's own) hands its row to
L{PassdbReply.fromFields}; nothing after this module looks at raw strings.
"""

from __future__ import annotations

from collections.abc import Iterable

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
KNOWN_FIELDS = FLAG_FIELDS | {"host", "port", "destuser", "reason", "user", "password"}


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


def _redactedPassword(password: str | None) -> str:
    """A stored password in a repr: the scheme, never the value."""
    if password is None:
        return "None"
    scheme, brace, _ = password.partition("}")
    return repr((scheme + brace if password.startswith("{") and brace else "") + "***")


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
        extra: list[tuple[str, str | None]] = []
        for rawKey, value in fields:
            key = rawKey.strip().lower()
            if not key or key.startswith("userdb_"):
                continue
            if key in _FLAGS:
                values[key] = parseFlag(key, value)
            elif key == "port":
                values["port"] = parsePort(value)
            elif key in ("host", "destuser", "reason", "user"):
                if value is not None:
                    values[key] = value
            elif key == "password":
                password = value
            else:
                extra.append((key, value))
        return cls(password=password, extra=tuple(extra), **values)  # type: ignore[arg-type]
