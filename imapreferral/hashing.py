"""
Making stored passwords (C{imapreferral pw}), as C{doveadm pw} does.

Every value is C{{SCHEME}value} in Dovecot's own encoding, made with the
libraries L{imapreferral.passwords} verifies with (hashlib, libpass, bcrypt,
argon2-cffi), so what we make we accept, and a test checks Dovecot's
C{doveadm pw -t} accepts it too. Costs are Dovecot's where it has one
(C{SHA512-CRYPT} at 5,000 rounds, C{PBKDF2} at 5,000), stronger where
Dovecot's is weak: bcrypt at cost 10 (Dovecot: 5) and argon2 with
libsodium's "moderate" memory, 64 MiB, on one lane (libsodium verifies only
one).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Callable

import argon2
import bcrypt
from passlib.hash import des_crypt, md5_crypt, sha256_crypt, sha512_crypt

from imapreferral._cram import cramContext
from imapreferral.passwords import UnknownScheme

#: The scheme C{imapreferral pw} makes when none is named: bcrypt, which
#: Dovecot 2.3 makes for its default C{CRYPT} too.
DEFAULT_SCHEME = "BLF-CRYPT"

#: bcrypt's cost (2^10 rounds; Dovecot's doveadm uses 5, too cheap today).
BCRYPT_COST = 10

#: Dovecot's C{PBKDF2} iterations (C{password-scheme-pbkdf2.c}).
PBKDF2_ROUNDS = 5000


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _digest(name: str, encode: Callable[[bytes], str] = _b64) -> Callable[[bytes], str]:
    return lambda password: encode(hashlib.new(name, password).digest())


def _salted(name: str) -> Callable[[bytes], str]:
    """C{{SSHA}} and friends: digest of password + salt, then the salt, base64."""

    def make(password: bytes) -> str:
        salt = secrets.token_bytes(16)
        return _b64(hashlib.new(name, password + salt).digest() + salt)

    return make


def _text(password: bytes) -> str:
    return password.decode("utf-8", "surrogateescape")


def _bcrypt(password: bytes) -> str:
    # crypt_blowfish reads 72 bytes: the check cuts there too.
    return bcrypt.hashpw(password[:72], bcrypt.gensalt(BCRYPT_COST)).decode("ascii")


def _argon2(kind: argon2.Type) -> Callable[[bytes], str]:
    hasher = argon2.PasswordHasher(time_cost=3, memory_cost=65536, parallelism=1, type=kind)
    return lambda password: hasher.hash(password)


def _pbkdf2(password: bytes) -> str:
    """Dovecot's C{$1$salt$rounds$hexhash}: PBKDF2-HMAC-SHA1 over the salt's text."""
    salt = secrets.token_urlsafe(12)
    digest = hashlib.pbkdf2_hmac("sha1", password, salt.encode("ascii"), PBKDF2_ROUNDS)
    return f"$1${salt}${PBKDF2_ROUNDS}${digest.hex()}"


def _crypt(handler: object) -> Callable[[bytes], str]:
    return lambda password: str(handler.hash(password))  # type: ignore[attr-defined]


_MAKERS: dict[str, Callable[[bytes], str]] = {
    "PLAIN": _text,
    "CLEAR": _text,
    "CLEARTEXT": _text,
    "PLAIN-MD5": _digest("md5", bytes.hex),
    "LDAP-MD5": _digest("md5"),
    "SHA": _digest("sha1"),
    "SHA1": _digest("sha1"),
    "SHA256": _digest("sha256"),
    "SHA512": _digest("sha512"),
    "SMD5": _salted("md5"),
    "SSHA": _salted("sha1"),
    "SSHA256": _salted("sha256"),
    "SSHA512": _salted("sha512"),
    "CRYPT": _bcrypt,  # what doveadm makes for CRYPT
    "DES-CRYPT": _crypt(des_crypt),
    "SHA256-CRYPT": _crypt(sha256_crypt.using(rounds=5000)),
    "SHA512-CRYPT": _crypt(sha512_crypt.using(rounds=5000)),
    "BLF-CRYPT": _bcrypt,
    "MD5-CRYPT": _crypt(md5_crypt),
    "MD5": _crypt(md5_crypt),
    "ARGON2I": _argon2(argon2.Type.I),
    "ARGON2ID": _argon2(argon2.Type.ID),
    "PBKDF2": _pbkdf2,
    "CRAM-MD5": lambda password: cramContext(password).hex(),
    "HMAC-MD5": lambda password: cramContext(password).hex(),
}

#: Every scheme L{makePassword} makes, in the order C{imapreferral pw -l} lists them.
SCHEMES = tuple(_MAKERS)

#: Schemes that keep the password recoverable or are one fast digest: fine
#: for CRAM-MD5 or for tests, not for storing users' passwords.
WEAK_SCHEMES = frozenset(
    {"PLAIN", "CLEAR", "CLEARTEXT", "PLAIN-MD5", "LDAP-MD5", "SHA", "SHA1", "SHA256", "SHA512"}
    | {"SMD5", "SSHA", "SSHA256", "SSHA512", "DES-CRYPT", "MD5-CRYPT", "MD5", "CRAM-MD5"}
    | {"HMAC-MD5"}
)


def makePassword(password: bytes, scheme: str = DEFAULT_SCHEME) -> str:
    """
    A stored password C{{SCHEME}value} for C{password}. Slow schemes hash
    here, in the caller's thread: the command line waits for it anyway.

    @param scheme: One of L{SCHEMES}, any case.
    @raise UnknownScheme: for another scheme.
    @raise ValueError: for a password the scheme cannot take (a NUL byte
        in a crypt(3) scheme: C takes no NUL, and IMAP sends none).
    """
    name = scheme.upper()
    make = _MAKERS.get(name)
    if make is None:
        raise UnknownScheme(
            f"cannot make {{{scheme}}} passwords (use one of {', '.join(SCHEMES)})"
        )
    if b"\0" in password and "CRYPT" in name:
        raise ValueError(f"{{{name}}} cannot hold a password with a NUL byte")
    return "{" + name + "}" + make(password)
