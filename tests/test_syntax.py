"""IMAP syntax checks the server makes itself: tables of bytes in, answers out."""

from __future__ import annotations

import pytest

from imapreferral.imap.syntax import (
    literalSizeValid,
    parseQuoted,
    validTag,
    withoutInternals,
)


@pytest.mark.parametrize(
    ("tag", "valid"),
    [
        (b"a1", True),
        (b"A.b-c_9", True),
        (b"*", False),
        (b"a+", False),
        (b"a\x01", False),
        (b"a\xff", False),
        (b'a"', False),
        (b"a{", False),
        (b"a%", False),
    ],
    ids=["plain", "punctuation", "star", "plus", "control", "8bit", "quote", "brace", "percent"],
)
def test_validTag(tag, valid):
    assert validTag(tag) is valid


@pytest.mark.parametrize(
    ("line", "valid"),
    [
        (b"a LOGIN u p", True),
        (b"a LOGIN {5}", True),
        (b"a LOGIN {0}", True),
        (b"a LOGIN {-5}", False),
        (b"a LOGIN { 4}", False),
        (b"a LOGIN {12345678901}", False),
        (b"a LOGIN {}", False),
        (b"a LOGIN x}", True),
    ],
    ids=["noLiteral", "size", "zero", "negative", "space", "elevenDigits", "empty", "noBrace"],
)
def test_literalSizeValid(line, valid):
    assert literalSizeValid(line) is valid


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        (b'"alice" "pw"', (b"alice", b'"pw"')),
        (b'"a\\"b"', (b'a"b', b"")),
        (b'"a\\\\b"', (b"a\\b", b"")),
        (b'""', (b"", b"")),
        (b'"unterminated', None),
        (b'"bad\\escape"', None),
        (b'"a"b', None),
        (b'"a\rb"', None),
    ],
    ids=["thenMore", "quote", "backslash", "empty", "unterminated", "badEscape", "glued", "cr"],
)
def test_parseQuoted(text, parsed):
    assert parseQuoted(text) == parsed


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        (b"Authentication aborted by client.", b"Authentication aborted by client."),
        (b"Unsupported command: b'FOO'", b"Unsupported command."),
        (b"Server error: KeyError('x')", b"Server error."),
        (b"Illegal syntax: b'x' b'y'", b"Illegal syntax."),
    ],
    ids=["plain", "repr", "serverError", "reprs"],
)
def test_withoutInternals(message, shown):
    assert withoutInternals(message) == shown
