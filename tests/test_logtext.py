"""The one quoting rule for client-controlled values in log lines, and oneLine."""

from __future__ import annotations

import random
import re

import pytest
from hostile import HOSTILE_NAMES, unquote

from imapreferral.logtext import literalFormat, oneLine, quote, quoteBytes

QUOTE_TABLE = [
    ("alice", '"alice"'),
    ("", '""'),
    ("jörg@exämple.com", '"jörg@exämple.com"'),  # printable Unicode stays
    ("evil' remote=6.6.6.6 x='", "\"evil' remote=6.6.6.6 x='\""),  # ' needs nothing
    ('a"b', '"a\\"b"'),
    ("a\\b", '"a\\\\b"'),
    ('a\\"b', '"a\\\\\\"b"'),  # \" sent: both escaped, the quote stays closed
    ("a\nb\rc", '"a\\x0ab\\x0dc"'),
    ("\x00\x1b\x7f", '"\\x00\\x1b\\x7f"'),  # NUL, ESC, DEL
    ("a\tb", '"a\\x09b"'),
    ("\x85", '"\\u0085"'),  # NEL: C1 control, a line break to Python
    ("a\u2028b\u2029c", '"a\\u2028b\\u2029c"'),  # Unicode line/paragraph separators
    ("\u202eevil\u2066", '"\\u202eevil\\u2066"'),  # bidi controls reorder a terminal
    ("\udcff\udc80", '"\\xff\\x80"'),  # undecodable bytes (surrogateescape)
    ("\ud800", '"\\ud800"'),  # any other lone surrogate
    ("\\xff", '"\\\\xff"'),  # typed, not an escaped byte
]


@pytest.mark.parametrize(("text", "expected"), QUOTE_TABLE, ids=[r[1] for r in QUOTE_TABLE])
def test_quote(text, expected):
    assert quote(text) == expected


CUT_TABLE = [
    ("a" * 64, 64, '"' + "a" * 64 + '"'),  # exactly the limit: whole
    ("a" * 100, 64, '"' + "a" * 64 + '"[cut from 100 bytes]'),
    ("ö" * 40, 64, '"' + "ö" * 32 + '"[cut from 80 bytes]'),  # 2-byte characters
    ("a" * 63 + "ö", 64, '"' + "a" * 63 + '"[cut from 65 bytes]'),  # no half character
    ("\udcff" * 70, 64, '"' + "\\xff" * 64 + '"[cut from 70 bytes]'),  # a raw byte is one
    ('"' * 70, 64, '"' + '\\"' * 64 + '"[cut from 70 bytes]'),  # limit before escaping
]


@pytest.mark.parametrize(
    ("text", "limit", "expected"), CUT_TABLE, ids=[f"{len(r[0])}-chars" for r in CUT_TABLE]
)
def test_quoteCutsAtLimitOutsideTheQuotes(text, limit, expected):
    assert quote(text, limit) == expected


def test_quoteBytesWritesUndecodableBytesAsBytes():
    assert quoteBytes(b"a\xffb\xc3\xa9") == '"a\\xffbé"'


#: RFC-style grammar of what quote() writes: nothing can end the string early.
_QUOTED = re.compile(
    r'"(?:[^"\\\x00-\x1f\x7f-\x9f\u2028\u2029]|\\["\\]|\\x[0-9a-f]{2}|\\u[0-9a-f]{4})*"'
)
_ALPHABET = "\"\\'x= \n\r\t\x00\x7f\x85\u2028\u202e\udcff\ud800é[]:"


def _samples(count: int = 3000) -> list[str]:
    rng = random.Random(7)
    return ["".join(rng.choice(_ALPHABET) for _ in range(rng.randrange(12))) for _ in range(count)]


def _assertClosedAndDecodesBack(text: str) -> None:
    logged = quote(text)
    assert _QUOTED.fullmatch(logged), logged
    assert len(logged.splitlines()) == 1, logged
    assert unquote(logged) == text


@pytest.mark.parametrize("name", HOSTILE_NAMES.values(), ids=HOSTILE_NAMES.keys())
def test_quoteOfHostileNameIsOneClosedStringThatDecodesBack(name):
    _assertClosedAndDecodesBack(name.decode("utf-8", "surrogateescape"))


def test_quoteOfRandomHostileTextIsOneClosedStringThatDecodesBack():
    for text in _samples():
        _assertClosedAndDecodesBack(text)


ONE_LINE_TABLE = [
    ("connection refused", "connection refused"),
    (
        "consuming input failed: server closed the connection unexpectedly\n\tThis probably "
        "means the server terminated abnormally\n\tbefore or while processing the request.",
        "consuming input failed: server closed the connection unexpectedly",
    ),
    ("\n  \nsecond line first\nthird", "second line first"),
    ('quotes "stay" \\ as is', 'quotes "stay" \\ as is'),
    ("a\x1b[2Kb\u2028", "a\\x1b[2Kb"),
    ("", ""),
]


@pytest.mark.parametrize(("text", "expected"), ONE_LINE_TABLE, ids=[r[1] for r in ONE_LINE_TABLE])
def test_oneLineKeepsTheFirstLine(text, expected):
    assert oneLine(text) == expected


@pytest.mark.parametrize("text", ["plain", "{summary} {0} {", "}}{{", "a {x!r:>9}"])
def test_literalFormatPrintsTheTextAsItIs(text):
    from twisted.logger import formatEvent

    assert formatEvent({"log_format": literalFormat(text), "summary": "x", "x": 1}) == text
