"""
Client-chosen values built to forge or break log lines, and the decoder
that shows a logged value means exactly what the client sent.
"""

from __future__ import annotations

import re

#: User names (bytes, as on the wire) that try to forge a C{remote=}, close
#: the quote, start a line, hide text or smuggle bytes.
HOSTILE_NAMES = {
    "repr-quote": b"evil' remote=6.6.6.6 mech=PLAIN: logged in x='",
    "double-quote": b'evil" remote=6.6.6.6 mech=PLAIN: authentication failed user="x',
    "escaped-quote": b'evil\\" remote=6.6.6.6 \\"',
    "backslashes": b"a\\\\b\\",
    "remote-only": b"remote=6.6.6.6",
    "remote-loopback": b"remote=127.0.0.1",
    "newline-forged-line": b"x\n2026-01-01T00:00:00+0000 [-] login remote=6.6.6.6 local=6.6.6.6:143"
    b' mech=PLAIN: authentication failed user="y"',
    "cr": b"x\rlogin remote=6.6.6.6",
    "crlf": b"x\r\nremote=6.6.6.6",
    "nul": b"a\x00remote=6.6.6.6",
    "tab-escape-del": b"a\tb\x1b[2K\x7fremote=6.6.6.6",
    "close-bracket": b'] login remote=6.6.6.6 local=x mech=PLAIN: authentication failed user="',
    "open-bracket": b"[-] login remote=6.6.6.6",
    "ipv6-looking": b"2001:db8::6 remote=2001:db8::6 [::6]",
    "ipv4-mapped": b"::ffff:6.6.6.6",
    "non-utf8": b"\xff\xfe remote=6.6.6.6 \xc3",
    "unicode-line-breaks": "a\u2028remote=6.6.6.6\u2029b\u0085c".encode(),
    "bidi-override": "\u202eremote=6.6.6.6\u202c".encode(),
    "format-braces": b"{summary} {0} {log_format!r} { remote=6.6.6.6 }",
    "very-long": b"remote=6.6.6.6 " * 260,
}

_ESCAPE = re.compile(r'\\(?:x([0-9a-f]{2})|u([0-9a-f]{4})|(["\\]))')


def unquote(logged: str) -> str:
    """
    Undo L{imapreferral.logtext.quote} (without a cut marker): C{\\xNN}
    above 0x7f is the undecodable byte NN (a surrogate escape).
    """
    assert logged[0] == logged[-1] == '"', logged

    def one(match: re.Match) -> str:
        byte, code, char = match.groups()
        if byte is not None:
            value = int(byte, 16)
            return chr(value if value < 0x80 else 0xDC00 + value)
        return chr(int(code, 16)) if code is not None else char

    return _ESCAPE.sub(one, logged[1:-1])
