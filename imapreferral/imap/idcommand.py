"""
The C{ID} command (RFC 2971): what the client says, and what we answer.
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.logger import Logger
from twisted.mail.imap4 import parseNestedParens

from imapreferral.login.logline import localText, remoteText
from imapreferral.logtext import quote, sessionSystem

#: What we log of a client's ID: RFC 2971's fields and values are free
#: text (values up to 1024 octets, 30 pairs); a log line need not be.
LOGGED_VALUE_LIMIT = 64
LOGGED_FIELDS_LIMIT = 12

_log = Logger()


def parseID(line: bytes) -> list[tuple[str, str]]:
    """
    RFC 2971: C{NIL} or a parenthesised list of field/value string pairs.

    @raise ValueError: for anything else.
    """
    text = line.strip()
    if text.upper() == b"NIL":
        return []
    if not (text.startswith(b"(") and text.endswith(b")")):
        raise ValueError("ID takes NIL or a list")
    try:
        items = parseNestedParens(text[1:-1])
    except Exception as e:
        raise ValueError(str(e)) from None
    if len(items) % 2 or len(items) > 60 or not all(isinstance(i, bytes | None) for i in items):
        raise ValueError("ID takes field/value pairs")
    decoded = [(i or b"").decode("utf-8", "surrogateescape") for i in items]
    return list(zip(decoded[::2], decoded[1::2], strict=True))


def _quoted(text: str) -> bytes:
    return b'"' + text.replace("\\", "\\\\").replace('"', '\\"').encode("utf-8") + b'"'


def formatID(fields: Iterable[tuple[str, str]]) -> bytes:
    """The untagged C{ID (...)} response for our own fields."""
    return b"ID (" + b" ".join(_quoted(k) + b" " + _quoted(v) for k, v in fields) + b")"


def formatIDForLog(fields: list[tuple[str, str]]) -> str:
    """
    C{"name"="Thunderbird" "version"="115.0"}: each field and value quoted
    and cut at L{LOGGED_VALUE_LIMIT} bytes, at most L{LOGGED_FIELDS_LIMIT}
    pairs, then C{[cut from N fields]}.
    """
    text = " ".join(
        f"{quote(key, LOGGED_VALUE_LIMIT)}={quote(value, LOGGED_VALUE_LIMIT)}"
        for key, value in fields[:LOGGED_FIELDS_LIMIT]
    )
    if len(fields) > LOGGED_FIELDS_LIMIT:
        text += f" [cut from {len(fields)} fields]"
    return text


def logClientID(addresses: object, fields: list[tuple[str, str]]) -> None:
    """One line for what a client said about itself (C{addresses}: a L{LoginContext})."""
    text = formatIDForLog(fields)
    remote, local = remoteText(addresses), localText(addresses)
    session = getattr(addresses, "session", None)
    _log.info(
        "{summary}",
        summary=f"client ID remote={remote} local={local}: {text}",
        event="client ID",
        log_system=sessionSystem(_log.namespace, "info", session),
        session=session,
        remote=remote,
        local=local,
        fields=text,
    )
