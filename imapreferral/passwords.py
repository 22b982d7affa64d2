"""
Stored-password verification: Dovecot's C{{SCHEME}}value syntax.

This release knows the plaintext schemes (C{PLAIN}, C{CLEAR}, C{CLEARTEXT});
a value without a prefix uses the default scheme. Hashing schemes plug in
behind the same L{IPasswordVerifier} and may run in a thread pool.
"""

from __future__ import annotations

import hmac

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from imapreferral.interfaces import IPasswordVerifier

_PLAINTEXT = frozenset({"PLAIN", "CLEAR", "CLEARTEXT"})


class UnknownScheme(ValueError):
    """A stored password names a scheme this server cannot check."""


def splitScheme(stored: str, default: str = "PLAIN") -> tuple[str, str]:
    """
    Split C{{SCHEME}value} into C{("SCHEME", "value")}, upper-casing the
    scheme; a value with no prefix gets C{default}.
    """
    if stored.startswith("{"):
        end = stored.find("}")
        if end > 1:
            return stored[1:end].upper(), stored[end + 1 :]
    return default.upper(), stored


def isPlaintext(stored: str, default: str = "PLAIN") -> bool:
    """Whether C{stored} keeps the password recoverable (for CRAM-MD5)."""
    return splitScheme(stored, default)[0] in _PLAINTEXT


@implementer(IPasswordVerifier)
class SchemeVerifier:
    """
    Verifies Dovecot-style stored passwords.

    @ivar defaultScheme: The scheme of values without a C{{SCHEME}} prefix
        (Dovecot's C{default_pass_scheme}).
    """

    def __init__(self, defaultScheme: str = "PLAIN") -> None:
        self.defaultScheme = defaultScheme

    def verify(self, stored: str, password: bytes) -> Deferred[bool]:
        scheme, value = splitScheme(stored, self.defaultScheme)
        if scheme in _PLAINTEXT:
            return succeed(hmac.compare_digest(value.encode("utf-8"), password))
        return fail(UnknownScheme(f"unknown password scheme {{{scheme}}}"))

    def plaintext(self, stored: str) -> bytes | None:
        scheme, value = splitScheme(stored, self.defaultScheme)
        if scheme in _PLAINTEXT:
            return value.encode("utf-8")
        raise UnknownScheme(f"unknown password scheme {{{scheme}}}")
