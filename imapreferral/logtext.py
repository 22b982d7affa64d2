"""
Log text for values we do not control.

A client chooses its user name, its C{ID} fields and (behind HAProxy) the
bytes of a PROXY header. Each such value enters a log line through
L{quote}, one rule: always double quotes, C{\\"} and C{\\\\} escaped, and
every character that could end the line, reorder the text on screen or is
no text at all escaped as C{\\xNN} or C{\\uNNNN}. No input can close the
quote, so the fields we write before it (addresses, mechanism, outcome)
cannot be forged, and a line stays one line (a log reader splitting at
C{\\n}, at Python's other line breaks or at U+2028 sees one).

Non-UTF-8 bytes arrive as U{surrogateescape
<https://peps.python.org/pep-0383/>} code points and are written as the
byte they stand for (C{\\xff}); a literal backslash is C{\\\\}, so
C{\\xff} in the log is never what the client typed.
"""

from __future__ import annotations

import re


def _escapes() -> dict[int, str]:
    table = {c: f"\\x{c:02x}" for c in range(0x20)}
    table[0x7F] = "\\x7f"
    table[ord('"')] = '\\"'
    table[ord("\\")] = "\\\\"
    # C1 controls (U+0085 NEL is a line break to Python's splitlines), the
    # Unicode line and paragraph separators, and the bidirectional controls
    # that reorder what a terminal shows ("Trojan Source", CVE-2021-42574).
    others = [*range(0x80, 0xA0), 0x061C, 0x200E, 0x200F, *range(0x2028, 0x202F)]
    others += range(0x2066, 0x206A)
    table.update({c: f"\\u{c:04x}" for c in others})
    # Lone surrogates are no text; U+DC80..U+DCFF are undecodable bytes.
    table.update({c: f"\\u{c:04x}" for c in range(0xD800, 0xE000)})
    table.update({c: f"\\x{c - 0xDC00:02x}" for c in range(0xDC80, 0xDD00)})
    return table


_ESCAPES = _escapes()
#: For L{oneLine}: controls only; quotes and backslashes stay as they are.
_CONTROL_ESCAPES = {c: e for c, e in _ESCAPES.items() if chr(c) not in '"\\'}
#: Any character L{_ESCAPES} changes: most values have none (the fast path).
_NEEDS_ESCAPE = re.compile(
    '[\x00-\x1f"\\\\\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]'
)


def _utf8Size(char: str) -> int:
    """Bytes C{char} stood for on the wire (an escaped byte is one)."""
    code = ord(char)
    if code < 0x80 or 0xDC80 <= code <= 0xDCFF:
        return 1
    if code < 0x800:
        return 2
    return 3 if code < 0x10000 else 4


def _cut(text: str, limit: int) -> tuple[str, str]:
    """C{text} cut to at most C{limit} bytes at a character boundary, and the marker."""
    size = 0
    for index, char in enumerate(text):
        size += _utf8Size(char)
        if size > limit:
            total = size + sum(map(_utf8Size, text[index + 1 :]))
            return text[:index], f"[cut from {total} bytes]"
    return text, ""


def quote(text: str, limit: int | None = None) -> str:
    """
    C{text} as a log value: C{"..."} with the escapes above. With C{limit},
    at most C{limit} bytes of it (counted as UTF-8, cut at a character
    boundary) are kept and C{[cut from N bytes]} follows the closing quote,
    where the client cannot write.
    """
    marker = ""
    # A character is at most 4 bytes, so short values skip the count.
    if limit is not None and len(text) * 4 > limit:
        text, marker = _cut(text, limit)
    if _NEEDS_ESCAPE.search(text) is not None:
        text = text.translate(_ESCAPES)
    return f'"{text}"{marker}'


def quoteBytes(data: bytes, limit: int | None = None) -> str:
    """L{quote} for bytes off the wire: UTF-8, other bytes as C{\\xNN}."""
    return quote(data.decode("utf-8", "surrogateescape"), limit)


def oneLine(text: str) -> str:
    """
    The first non-blank line of a message we did not write (a database
    driver's error, which may go on for lines), its controls escaped as by
    L{quote}, without quotes: it goes last in a line, after what we know.
    """
    for line in text.splitlines():
        line = line.strip()
        if line:
            if _NEEDS_ESCAPE.search(line) is not None:
                line = line.translate(_CONTROL_ESCAPES)
            return line
    return ""


def literalFormat(text: str) -> str:
    """C{text} as a Twisted C{log_format} that prints it as it is."""
    if "{" in text or "}" in text:
        return text.replace("{", "{{").replace("}", "}}")
    return text


def sessionSystem(namespace: str, level: str, session: str | None) -> str | None:
    """
    The C{log_system} of a line that belongs to a session: Twisted's usual
    C{namespace#level} and the session id, so that text logs show
    C{[imapreferral.login.logline#info HDvZg1ZqNBo8]} and every line of one
    connection can be found by its id; L{None} (Twisted's default) when the
    line has no session.
    """
    return None if session is None else f"{namespace}#{level} {session}"
