"""
Stored-password verification: Dovecot's C{{SCHEME}}value syntax.

Each scheme is one row of L{_SCHEMES}, read from Dovecot 2.3's
C{src/auth/password-scheme*.c}: how its value is encoded when no C{.b64} /
C{.hex} suffix says, the raw length Dovecot uses to tell hex from base64, and
whether checking it is slow. The cryptography is hashlib, hmac, libpass,
bcrypt and argon2-cffi; the one exception is the MD5 block function
CRAM-MD5's stored form needs (see L{imapreferral._cram}).

Slow schemes run in a bounded thread pool (L{SchemeVerifier}); cheap ones run
inline, so a C{{PLAIN}} user never queues behind an argon2 one.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import os
import secrets
import threading
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import argon2
import attrs
import bcrypt
from passlib.context import CryptContext
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore, fail, succeed
from twisted.internet.interfaces import IReactorCore, IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from imapreferral._cram import cramContext, cramDigest
from imapreferral.interfaces import IPasswordVerifier


class UnknownScheme(ValueError):
    """A stored password names a scheme this server cannot check."""


class MalformedPassword(ValueError):
    """
    A stored password of a known scheme cannot be decoded: bad base64 or hex,
    wrong length, or a crypt(3) format we lack. Like L{UnknownScheme} it is
    the passdb's fault, not the user's, so callers report a temporary failure
    rather than a wrong password.
    """


class _Encoding(enum.Enum):
    NONE = "none"
    BASE64 = "base64"
    HEX = "hex"


# Dovecot's password_scheme_lookup(): "SHA256.HEX", case-insensitive.
_SUFFIXES = {"B64": _Encoding.BASE64, "BASE64": _Encoding.BASE64, "HEX": _Encoding.HEX}


@attrs.frozen
class _Scheme:
    """
    One scheme: C{check(raw, password)} gets the stored value after decoding.

    @ivar rawLength: The decoded length, or 0 if it varies. Dovecot guesses
        hex (exactly twice this long) or base64 for such values when no
        suffix is given, so C{{SHA}} takes a hex digest too.
    @ivar slow: Deliberately expensive: run in the thread pool.
    @ivar plaintext: The raw value is the password.
    @ivar cram: The raw value is the HMAC-MD5 context CRAM-MD5 needs.
    @ivar decoy: For slow schemes, makes from a raw value the value of a
        stored password with the same cost for a random password (see
        L{decoyLike}); L{None} (or a L{None} answer) when checking costs
        next to nothing anyway.
    """

    check: Callable[[bytes, bytes], bool]
    encoding: _Encoding = _Encoding.NONE
    rawLength: int = 0
    slow: bool = False
    plaintext: bool = False
    cram: bool = False
    decoy: Callable[[bytes], str | None] | None = None


def _plainCheck(raw: bytes, password: bytes) -> bool:
    return hmac.compare_digest(raw, password)


def _digestCheck(name: str) -> Callable[[bytes, bytes], bool]:
    def check(raw: bytes, password: bytes) -> bool:
        return hmac.compare_digest(hashlib.new(name, password).digest(), raw)

    return check


def _saltedCheck(name: str) -> Callable[[bytes, bytes], bool]:
    """C{{SSHA}} and friends: the digest of password + salt, then the salt."""
    size = hashlib.new(name).digest_size

    def check(raw: bytes, password: bytes) -> bool:
        if len(raw) <= size:  # Dovecot: "SSHA password is too short"
            raise MalformedPassword(f"salted {name} value is too short")
        digest = hashlib.new(name, password + raw[size:]).digest()
        return hmac.compare_digest(digest, raw[:size])

    return check


# bcrypt goes to the bcrypt package directly: libpass hands it passwords
# longer than 72 bytes, which bcrypt 5 refuses.
_CRYPT = CryptContext(schemes=["sha512_crypt", "sha256_crypt", "md5_crypt", "des_crypt"])
_BCRYPT = (b"$2a$", b"$2b$", b"$2y$")


def _systemCryptOf(password: bytes, setting: str) -> str:
    """
    crypt(3) of the C library, for C{$id$}s libpass lacks (yescrypt). The
    C{crypt} module is deprecated (gone in Python 3.13): without it such
    values are L{MalformedPassword}.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt
    except ImportError:
        raise MalformedPassword(f"unsupported crypt(3) value {setting[:4]!r}...") from None
    result = crypt.crypt(password.decode("utf-8", "surrogateescape"), setting)
    if not result or result.startswith("*"):
        raise MalformedPassword(f"unsupported crypt(3) value {setting[:4]!r}...")
    return result


def _systemCrypt(value: str, password: bytes) -> bool:
    result = _systemCryptOf(password, value)
    return hmac.compare_digest(result.encode("utf-8", "surrogateescape"), value.encode())


def _cryptCheck(raw: bytes, password: bytes) -> bool:
    """
    Dovecot's CRYPT, DES-CRYPT, SHA256-CRYPT, SHA512-CRYPT and BLF-CRYPT all
    call crypt(3), so the value's own C{$id$} decides, not the scheme name:
    C{{SHA512-CRYPT}$2y$...} is bcrypt. We know DES, C{$1$}, C{$5$}, C{$6$}
    and C{$2?$}; others (Debian's default yescrypt, C{$y$}) go to the
    system's crypt(3) where Python still has it.
    """
    if b"\0" in password:  # crypt(3) takes a C string; IMAP and SASL send no NUL
        return False
    try:
        if raw.startswith(_BCRYPT):
            # crypt_blowfish reads 72 bytes and ignores the rest.
            return bcrypt.checkpw(password[:72], raw)
        value = raw.decode("ascii")
        if _CRYPT.identify(value, required=False) is None:
            return _systemCrypt(value, password)
        return bool(_CRYPT.verify(password, value))
    except MalformedPassword:
        raise
    except ValueError as e:
        raise MalformedPassword(f"invalid crypt(3) value: {e}") from e


def _md5CryptCheck(raw: bytes, password: bytes) -> bool:
    """Dovecot's own md5_crypt_verify() knows only C{$1$}."""
    if not raw.startswith(b"$1$"):
        raise MalformedPassword("MD5-CRYPT value does not start with $1$")
    return _cryptCheck(raw, password)


def _md5Check(raw: bytes, password: bytes) -> bool:
    """Dovecot's C{{MD5}}: MD5-CRYPT if it starts with C{$1$}, else PLAIN-MD5."""
    if raw.startswith(b"$1$"):
        return _cryptCheck(raw, password)
    scheme = _SCHEMES["PLAIN-MD5"]
    return scheme.check(_decode(raw.decode("ascii", "replace"), scheme, None), password)


_ARGON2 = argon2.PasswordHasher()


def _argon2Check(raw: bytes, password: bytes) -> bool:
    """
    Like libsodium's crypto_pwhash_str_verify(), which Dovecot calls for both
    ARGON2I and ARGON2ID: the value's C{$argon2i$} / C{$argon2id$} decides.
    """
    try:
        return _ARGON2.verify(raw, password)
    except argon2.exceptions.VerifyMismatchError:
        return False
    except (argon2.exceptions.InvalidHashError, argon2.exceptions.VerificationError) as e:
        raise MalformedPassword(f"invalid argon2 value: {e!r}") from e


def _pbkdf2Check(raw: bytes, password: bytes) -> bool:
    """
    Dovecot's own format, C{$1$salt$rounds$hexhash}: PBKDF2-HMAC-SHA1 over
    the salt's text, 20 bytes (C{password-scheme-pbkdf2.c}).
    """
    fields = raw.split(b"$")
    if len(fields) != 5 or fields[:2] != [b"", b"1"] or not fields[3].isdigit():
        raise MalformedPassword("PBKDF2 value is not $1$salt$rounds$hash")
    expected = _unhex(fields[4])
    rounds = int(fields[3])
    if expected is None or len(expected) != 20 or rounds < 1:
        raise MalformedPassword("PBKDF2 value is not $1$salt$rounds$hash")
    digest = hashlib.pbkdf2_hmac("sha1", password, fields[2], rounds)
    return hmac.compare_digest(digest, expected)


def _secret() -> bytes:
    """A password nobody knows."""
    return secrets.token_urlsafe(24).encode("ascii")


def _cryptDecoy(raw: bytes) -> str:
    """
    The same crypt(3) method and cost: bcrypt's variant and cost with a new
    salt, C{rounds=} of the SHA crypts, the parameters of a system crypt(3)
    value (whose salt it reuses: crypt(3) takes them as one setting).
    """
    if raw.startswith(_BCRYPT):
        salt = raw[:7] + bcrypt.gensalt()[7:]  # "$2y$05$" + 22 new salt characters
        return bcrypt.hashpw(_secret(), salt).decode("ascii")
    value = raw.decode("ascii")
    name = _CRYPT.identify(value, required=False)
    if name is None:
        return _systemCryptOf(_secret(), value)
    handler = _CRYPT.handler(name)
    rounds = getattr(handler.from_string(value), "rounds", None)
    if rounds is not None:
        handler = handler.using(rounds=rounds)
    return str(handler.hash(_secret()))


def _md5Decoy(raw: bytes) -> str | None:
    return _cryptDecoy(raw) if raw.startswith(b"$1$") else None


def _argon2Decoy(raw: bytes) -> str:
    try:
        parameters = argon2.extract_parameters(raw.decode("ascii"))
    except (argon2.exceptions.InvalidHashError, UnicodeDecodeError) as e:
        raise MalformedPassword(f"invalid argon2 value: {e!r}") from e
    return argon2.PasswordHasher.from_parameters(parameters).hash(_secret())


def _pbkdf2Decoy(raw: bytes) -> str:
    fields = raw.split(b"$")
    if len(fields) != 5 or not fields[3].isdigit():
        raise MalformedPassword("PBKDF2 value is not $1$salt$rounds$hash")
    rounds = int(fields[3])
    salt = secrets.token_urlsafe(12).encode("ascii")
    digest = hashlib.pbkdf2_hmac("sha1", _secret(), salt, rounds)
    return f"$1${salt.decode()}${rounds}${digest.hex()}"


def _cramCheck(raw: bytes, password: bytes) -> bool:
    return hmac.compare_digest(cramContext(password), raw)


_PLAIN = _Scheme(_plainCheck, plaintext=True)
_CRAM = _Scheme(_cramCheck, _Encoding.HEX, 32, cram=True)
_CRYPTED = _Scheme(_cryptCheck, slow=True, decoy=_cryptDecoy)
_ARGON = _Scheme(_argon2Check, slow=True, decoy=_argon2Decoy)

_SCHEMES: dict[str, _Scheme] = {
    "PLAIN": _PLAIN,
    "CLEAR": _PLAIN,
    "CLEARTEXT": _PLAIN,
    "PLAIN-MD5": _Scheme(_digestCheck("md5"), _Encoding.HEX, 16),
    "LDAP-MD5": _Scheme(_digestCheck("md5"), _Encoding.BASE64, 16),
    "SHA": _Scheme(_digestCheck("sha1"), _Encoding.BASE64, 20),
    "SHA1": _Scheme(_digestCheck("sha1"), _Encoding.BASE64, 20),
    "SHA256": _Scheme(_digestCheck("sha256"), _Encoding.BASE64, 32),
    "SHA512": _Scheme(_digestCheck("sha512"), _Encoding.BASE64, 64),
    "SMD5": _Scheme(_saltedCheck("md5"), _Encoding.BASE64),
    "SSHA": _Scheme(_saltedCheck("sha1"), _Encoding.BASE64),
    "SSHA256": _Scheme(_saltedCheck("sha256"), _Encoding.BASE64),
    "SSHA512": _Scheme(_saltedCheck("sha512"), _Encoding.BASE64),
    "CRYPT": _CRYPTED,
    "DES-CRYPT": _CRYPTED,
    "SHA256-CRYPT": _CRYPTED,
    "SHA512-CRYPT": _CRYPTED,
    "BLF-CRYPT": _CRYPTED,
    "MD5-CRYPT": _Scheme(_md5CryptCheck, slow=True, decoy=_cryptDecoy),
    "MD5": _Scheme(_md5Check, slow=True, decoy=_md5Decoy),
    "ARGON2I": _ARGON,
    "ARGON2ID": _ARGON,
    "PBKDF2": _Scheme(_pbkdf2Check, slow=True, decoy=_pbkdf2Decoy),
    "CRAM-MD5": _CRAM,
    "HMAC-MD5": _CRAM,
}


def _unhex(data: bytes) -> bytes | None:
    try:
        return binascii.unhexlify(data)
    except (binascii.Error, ValueError):
        return None


def _decode(value: str, scheme: _Scheme, explicit: _Encoding | None) -> bytes:
    """Dovecot's password_decode(), hex-or-base64 guess included."""
    data = value.encode("utf-8", "surrogateescape")
    encoding = explicit or scheme.encoding
    guessed = explicit is None and encoding is not _Encoding.NONE and scheme.rawLength > 0
    if guessed:
        encoding = _Encoding.HEX if len(data) == 2 * scheme.rawLength else _Encoding.BASE64
    raw: bytes | None = data
    if encoding is _Encoding.HEX:
        raw = _unhex(data)
        if raw is None and not guessed:
            raise MalformedPassword("stored value is not valid hex")
        if raw is None:  # some lengths are both; Dovecot then tries base64
            encoding = _Encoding.BASE64
    if encoding is _Encoding.BASE64:
        try:
            raw = base64.b64decode(data, validate=True)
        except binascii.Error as e:
            raise MalformedPassword("stored value is not valid base64") from e
    assert raw is not None
    if scheme.rawLength and len(raw) != scheme.rawLength:
        raise MalformedPassword(f"stored value is {len(raw)} bytes, not {scheme.rawLength}")
    return raw


def _lookup(name: str) -> tuple[_Scheme, _Encoding | None]:
    base, dot, suffix = name.upper().partition(".")
    scheme = _SCHEMES.get(base)
    encoding = _SUFFIXES.get(suffix)
    if scheme is None or (dot and encoding is None):
        raise UnknownScheme(f"unknown password scheme {{{name}}}")
    return scheme, encoding


def _parse(stored: str, default: str) -> tuple[_Scheme, bytes]:
    name, value = splitScheme(stored, default)
    scheme, encoding = _lookup(name)
    return scheme, _decode(value, scheme, encoding)


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


def decoyLike(stored: str, default: str = "PLAIN") -> str:
    """
    A stored password of C{stored}'s scheme and cost (bcrypt cost, rounds,
    argon2 parameters) for a random password nobody knows: an unknown user
    is checked against it, so that they cost the hashing a known one does.
    Cheap schemes get a C{{PLAIN}} decoy: checking them costs next to nothing.
    For slow schemes this hashes once: call it off the reactor thread.

    @raise UnknownScheme: For a scheme we lack.
    @raise MalformedPassword: For a stored value that does not decode.
    """
    name, _ = splitScheme(stored, default)
    scheme, raw = _parse(stored, default)
    value = scheme.decoy(raw) if scheme.decoy is not None else None
    if value is None:
        return "{PLAIN}" + _secret().decode("ascii")
    return "{" + name.partition(".")[0] + "}" + value


def _schemeOf(stored: str, default: str) -> _Scheme | None:
    try:
        return _lookup(splitScheme(stored, default)[0])[0]
    except UnknownScheme:
        return None


def isPlaintext(stored: str, default: str = "PLAIN") -> bool:
    """Whether C{stored} keeps the password recoverable (C{{PLAIN.b64}} too)."""
    scheme = _schemeOf(stored, default)
    return scheme is not None and scheme.plaintext


def allowsCramMD5(stored: str, default: str = "PLAIN") -> bool:
    """
    Whether a CRAM-MD5 login can work for C{stored}: plaintext, or Dovecot's
    C{{CRAM-MD5}} context. Advertise the mechanism only if one user may pass.
    """
    scheme = _schemeOf(stored, default)
    return scheme is not None and (scheme.plaintext or scheme.cram)


def verifyCramMD5(stored: str, challenge: bytes, response: bytes, default: str = "PLAIN") -> bool:
    """
    Check a CRAM-MD5 response (RFC 2195: the lowercase hex HMAC-MD5 of the
    challenge, keyed with the password) against a stored password.

    @param response: The digest part of the client's reply, without the
        user name.
    @return: Whether it matches; L{False} for schemes that cannot do
        CRAM-MD5 (see L{allowsCramMD5}).
    @raise UnknownScheme: For a scheme we lack.
    @raise MalformedPassword: For a stored value that does not decode.
    """
    scheme, raw = _parse(stored, default)
    if scheme.plaintext:
        expected = hmac.new(raw, challenge, "md5").hexdigest().encode("ascii")
    elif scheme.cram:
        expected = cramDigest(raw, challenge)
    else:
        return False
    return hmac.compare_digest(expected, response)


_T = TypeVar("_T")

_hashingThread = threading.local()

#: How much lower the hashing threads' CPU priority is (Linux nice levels).
HASHING_NICENESS = 10


def _atLowPriority(f: Callable[..., _T], *args: object) -> _T:
    """
    Run C{f(*args)} in a pool thread whose CPU priority is lowered once. On
    Linux nice is per thread, and the threads argon2 starts for its lanes
    inherit it: with every core busy hashing, the reactor thread still gets
    the CPU when a cheap login arrives.
    """
    if not getattr(_hashingThread, "niced", False):
        _hashingThread.niced = True
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASHING_NICENESS)
        except (OSError, AttributeError):
            pass  # not Linux, or not allowed: plain priority then
    return f(*args)


@implementer(IPasswordVerifier)
class SchemeVerifier(Service):
    """
    Verifies Dovecot-style stored passwords, slow schemes in a thread pool.

    As a service it starts its own pool on L{startService} and joins it on
    L{stopService}; used without being started, it starts the pool on the
    first slow check (stopped at reactor shutdown, or by L{stopService}).
    At most C{maxConcurrent} checks are in the pool at once; the rest wait
    on a L{DeferredSemaphore}, outside it, in order.

    Besides L{IPasswordVerifier} it offers L{verifyCramMD5}.

    @ivar defaultScheme: The scheme of values without a C{{SCHEME}} prefix
        (Dovecot's C{default_pass_scheme}).
    @ivar _threadPool: See C{threadPool} parameter of L{__init__}; ours
        (created on demand) if that was L{None}.
    @ivar _reactor: See C{reactor} parameter of L{__init__}.
    """

    def __init__(
        self,
        defaultScheme: str = "PLAIN",
        threadPool: ThreadPool | None = None,
        reactor: IReactorFromThreads | None = None,
        maxConcurrent: int = 8,
    ) -> None:
        """
        @param threadPool: A started pool to hash in, owned by the caller;
            L{None} for one of our own with C{maxConcurrent} threads.
        @param reactor: Delivers results from the pool and, for our own
            pool, its shutdown; the global reactor if L{None}.
        @param maxConcurrent: How many slow checks may run at once.
        """
        self.defaultScheme = defaultScheme
        self._threadPool = threadPool
        self._ownsPool = threadPool is None
        self._reactor = reactor
        self._maxConcurrent = maxConcurrent
        self._semaphore = DeferredSemaphore(maxConcurrent)
        self._shutdownTrigger: object = None
        self._pending: set[Deferred[Any]] = set()

    def verify(self, stored: str, password: bytes) -> Deferred[bool]:
        """Cheap schemes answer at once; slow ones queue for the pool."""
        try:
            scheme, raw = _parse(stored, self.defaultScheme)
            if not scheme.slow:
                return succeed(scheme.check(raw, password))
        except Exception:
            return fail()
        return self._queue(scheme.check, raw, password)

    def decoyLike(self, stored: str) -> Deferred[str]:
        """
        L{imapreferral.passwords.decoyLike}: slow schemes hash in the pool,
        like a check.
        """
        try:
            scheme, _ = _parse(stored, self.defaultScheme)
            if not scheme.slow:
                return succeed(decoyLike(stored, self.defaultScheme))
        except Exception:
            return fail()
        return self._queue(decoyLike, stored, self.defaultScheme)

    def _queue(self, f: Callable[..., _T], *args: object) -> Deferred[_T]:
        """Run C{f(*args)} in the pool, at most C{maxConcurrent} at once."""
        result: Deferred[_T] = self._semaphore.run(self._inPool, f, *args)
        self._pending.add(result)  # type: ignore[arg-type]
        return result.addBoth(self._answered, result)

    @property
    def queued(self) -> int:
        """Slow checks queued for a hashing thread (beyond C{maxConcurrent})."""
        return len(self._semaphore.waiting)

    @property
    def hashing(self) -> int:
        """Slow checks in the pool now."""
        return self._semaphore.limit - self._semaphore.tokens

    def _answered(self, result: object, d: Deferred[Any]) -> object:
        self._pending.discard(d)
        return result

    def _inPool(self, f: Callable[..., _T], *args: object) -> Deferred[_T]:
        return deferToThreadPool(self._getReactor(), self._pool(), _atLowPriority, f, *args)

    def plaintext(self, stored: str) -> bytes | None:
        scheme, raw = _parse(stored, self.defaultScheme)
        return raw if scheme.plaintext else None

    def verifyCramMD5(self, stored: str, challenge: bytes, response: bytes) -> bool:
        """See L{imapreferral.passwords.verifyCramMD5}."""
        return verifyCramMD5(stored, challenge, response, self.defaultScheme)

    def startService(self) -> None:
        super().startService()
        self._pool()

    def stopService(self) -> Deferred[None]:
        """Wait until every check has answered, then join our pool's threads."""
        super().stopService()
        return Deferred.fromCoroutine(self._drainAndStop())

    async def _drainAndStop(self) -> None:
        # Our callbacks come after those callers added, so this waits until
        # every caller has had its answer.
        while self._pending:
            await DeferredList(list(self._pending))
        self._stopPool()

    def _getReactor(self) -> IReactorFromThreads:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor  # type: ignore[assignment]
        return self._reactor  # type: ignore[return-value]

    def _pool(self) -> ThreadPool:
        if self._threadPool is None:
            pool = ThreadPool(0, self._maxConcurrent, "imapreferral-passwords")
            pool.start()
            core: IReactorCore = self._getReactor()  # type: ignore[assignment]
            self._shutdownTrigger = core.addSystemEventTrigger(
                "during", "shutdown", self._atShutdown
            )
            self._threadPool = pool
        return self._threadPool

    def _atShutdown(self) -> None:
        self._shutdownTrigger = None
        self._stopPool()

    def _stopPool(self) -> None:
        if not self._ownsPool or self._threadPool is None:
            return
        pool, self._threadPool = self._threadPool, None
        if self._shutdownTrigger is not None:
            core: IReactorCore = self._getReactor()  # type: ignore[assignment]
            core.removeSystemEventTrigger(self._shutdownTrigger)
            self._shutdownTrigger = None
        pool.stop()
