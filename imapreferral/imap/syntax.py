"""
IMAP syntax the server checks itself, where Twisted's parser is too lenient
or leaks internals: tags, literal sizes, quoted strings, reply texts. Pure functions of bytes, table-tested.
"""

from __future__ import annotations

import re

#: RFC 3501 §9: number = 1*DIGIT, in a literal's C{{...}}.
_LITERAL = re.compile(rb"\{[0-9]{1,10}\}")
#: RFC 3501 §9 quoted = DQUOTE *QUOTED-CHAR DQUOTE, with \" and \\ escapes.
_QUOTED = re.compile(rb'"((?:[^"\\\r\n]|\\["\\])*)"(?: |$)')
_UNESCAPE = re.compile(rb'\\(["\\])')
#: RFC 3501 §9: tag = 1*<any ASTRING-CHAR except "+">.
_TAG = re.compile(rb"[^\x00-\x20\x7f-\xff(){%*\"\\+]+")
#: Twisted puts reprs and exception text in some replies ("...: b'x'").
_INTERNALS = re.compile(rb"(?::\s*b['\"].*|Server error: .*)$", re.S)


def validTag(tag: bytes) -> bool:
    """Whether C{tag} may be echoed where a tag goes (no controls, C{*} or C{+})."""
    return _TAG.fullmatch(tag) is not None


def literalSizeValid(line: bytes) -> bool:
    """
    Whether a line that ends in C{{...}} (announcing a literal) has a valid
    size; a line without one is valid. Twisted reads the size with
    C{int()}, so C{{-5}} or C{{ 4}} would swallow the next command.
    """
    if not line.endswith(b"}"):
        return True
    start = line.rfind(b"{")
    return start < 0 or _LITERAL.fullmatch(line[start:]) is not None


def parseQuoted(text: bytes) -> tuple[bytes, bytes] | None:
    """
    A quoted string at the start of C{text}, escapes (C{\\"}, C{\\\\})
    undone, and what follows it; L{None} if it is not one.
    """
    match = _QUOTED.match(text)
    if match is None:
        return None
    return _UNESCAPE.sub(rb"\1", match.group(1)), text[match.end() :]


def withoutInternals(message: bytes) -> bytes:
    """Drop Python reprs and exception text from a reply's text."""
    cleaned = _INTERNALS.sub(b"", message).rstrip(b": ")
    if message.startswith(b"Server error") or (cleaned and cleaned != message):
        cleaned = (cleaned or b"Server error").rstrip(b".") + b"."
    return cleaned
