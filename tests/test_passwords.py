"""
Password schemes against Dovecot's own hashes (C{vectors/doveadm-pw.txt},
made by C{vectors/make-vectors.sh}), Dovecot's decoding rules, CRAM-MD5, and
the bounded thread pool that keeps slow hashes off the reactor.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import threading
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import task
from twisted.internet.defer import gatherResults
from twisted.python.threadpool import ThreadPool

from imapreferral import _cram, passwords
from imapreferral.passwords import (
    MalformedPassword,
    SchemeVerifier,
    UnknownScheme,
    allowsCramMD5,
    isPlaintext,
    verifyCramMD5,
)

VECTORS = Path(__file__).parent / "vectors" / "doveadm-pw.txt"


def _loadVectors() -> list[tuple[str, bytes, str]]:
    rows = []
    for line in VECTORS.read_text("utf-8").splitlines():
        if line and not line.startswith("#"):
            scheme, password, stored = line.split("\t")
            rows.append((scheme, password.encode("utf-8"), stored))
    return rows


ALL_VECTORS = _loadVectors()


def vector(scheme: str, password: str = "pässwörd") -> str:
    """The stored value doveadm made for C{scheme} and C{password}."""
    return next(s for n, p, s in ALL_VECTORS if n == scheme and p == password.encode())


def _poolThreads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "imapreferral-passwords" in t.name]


@pytest_twisted.async_yield_fixture
async def verifier():
    """A verifier whose own pool starts on demand; joined afterwards."""
    verifier = SchemeVerifier()
    yield verifier
    await verifier.stopService()
    assert _poolThreads() == []


@pytest.mark.parametrize(
    ("stored", "password"),
    [(stored, password) for _, password, stored in ALL_VECTORS],
    ids=[f"{scheme}-{i}" for i, (scheme, _, _) in enumerate(ALL_VECTORS)],
)
@pytest_twisted.ensureDeferred
async def test_doveadmVector(verifier: SchemeVerifier, stored: str, password: bytes) -> None:
    assert await verifier.verify(stored, password) is True
    # crypt(3) reads only 8 (DES) or 72 (bcrypt) bytes: change the first.
    assert await verifier.verify(stored, b"x" + password) is False


def test_vectorsCoverEveryScheme() -> None:
    made = {scheme.partition(".")[0] for scheme, _, _ in ALL_VECTORS}
    assert made == set(passwords._SCHEMES)


@pytest.mark.parametrize(
    ("scheme", "password", "other"),
    [
        ("DES-CRYPT", "longer than eight", b"longer tXXXXX"),  # DES reads 8 bytes
        ("BLF-CRYPT", "0123456789" * 7 + "012345678", b"0123456789" * 7 + b"01XXX"),  # 72
    ],
    ids=["des-8", "bcrypt-72"],
)
@pytest_twisted.ensureDeferred
async def test_cryptTruncates(
    verifier: SchemeVerifier, scheme: str, password: str, other: bytes
) -> None:
    """crypt(3) ignores the bytes past its limit; so does Dovecot, so do we."""
    assert await verifier.verify(vector(scheme, password), other) is True


PW = "pässwörd".encode()
MD5, SHA1, SHA256 = (hashlib.new(n, PW).digest() for n in ("md5", "sha1", "sha256"))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# Dovecot's password_decode() and scheme quirks; test_doveadm_live.py checks
# that `doveadm pw -t` agrees on each row.
DECODING = [
    ("{SHA}" + SHA1.hex(), True),  # hex guessed: exactly twice the raw length
    ("{SHA}" + SHA1.hex().upper(), True),  # hex is case-insensitive
    ("{PLAIN-MD5}" + b64(MD5), True),  # base64 guessed for a hex scheme
    ("{LDAP-MD5}" + MD5.hex(), True),  # and hex for a base64 one
    ("{MD5}" + MD5.hex(), True),  # {MD5} without $1$ is PLAIN-MD5
    ("{sha256.hex}" + SHA256.hex(), True),  # scheme and suffix in any case
    ("{PLAIN.BASE64}" + b64(PW), True),  # the long suffix
    ("{SHA}" + hashlib.sha1(b"other").hexdigest(), False),
    ("{SHA}abc", MalformedPassword),  # neither length
    ("{SHA.HEX}" + "zz" * 20, MalformedPassword),  # an explicit suffix is not a guess
    ("{SHA256.B64}" + SHA256.hex(), MalformedPassword),  # 48 bytes, not 32
    ("{PLAIN.B64}cMOkc3N3w7ZyZA", MalformedPassword),  # base64 needs its padding
    ("{SSHA}" + b64(SHA1), MalformedPassword),  # no salt
    ("{MD5-CRYPT}" + MD5.hex(), MalformedPassword),  # only {MD5} falls back
    ("{CRYPT}$9$abcdefgh$abcdefghijklmnop", MalformedPassword),  # crypt id we lack
    ("{ARGON2ID}$argon2id$v=19$garbage", MalformedPassword),
    ("{PBKDF2}$1$salt$5000$abcd", MalformedPassword),  # hash not 20 bytes
    ("{PBKDF2}$1$salt$many$" + "00" * 20, MalformedPassword),
    ("{CRAM-MD5}abcd", MalformedPassword),
    ("{NOSUCH}x", UnknownScheme),
    ("{SHA.ROT13}" + b64(SHA1), UnknownScheme),  # unknown encoding suffix
    ("{SCRAM-SHA-1}x", UnknownScheme),  # a Dovecot scheme we do not implement
]


@pytest.mark.parametrize(("stored", "expected"), DECODING, ids=[r[0][:24] for r in DECODING])
@pytest_twisted.ensureDeferred
async def test_decoding(verifier: SchemeVerifier, stored: str, expected: object) -> None:
    if isinstance(expected, bool):
        assert await verifier.verify(stored, PW) is expected
    else:
        with pytest.raises(expected):  # type: ignore[call-overload]
            await verifier.verify(stored, PW)


@pytest_twisted.ensureDeferred
async def test_defaultScheme() -> None:
    """A value without C{{SCHEME}} uses Dovecot's C{default_pass_scheme}."""
    verifier = SchemeVerifier(defaultScheme="sha256")
    assert await verifier.verify(b64(SHA256), PW) is True
    assert await verifier.verify("{PLAIN}pässwörd", PW) is True
    assert await SchemeVerifier().verify("pässwörd", PW) is True


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        ("{PLAIN}pässwörd", PW),
        ("{CLEAR.b64}" + b64(PW), PW),
        ("{CLEARTEXT.HEX}" + PW.hex(), PW),
        ("no prefix", b"no prefix"),
        (vector("SHA"), None),
        (vector("CRAM-MD5"), None),
        (vector("ARGON2ID"), None),
    ],
)
def test_plaintext(stored: str, expected: bytes | None) -> None:
    assert SchemeVerifier().plaintext(stored) == expected


@pytest.mark.parametrize("stored", ["{NOSUCH}x", "{PLAIN.ROT13}x"])
def test_unknownScheme(stored: str) -> None:
    with pytest.raises(UnknownScheme):
        SchemeVerifier().plaintext(stored)
    with pytest.raises(UnknownScheme):
        verifyCramMD5(stored, b"<1@x>", b"0" * 32)
    assert not isPlaintext(stored)
    assert not allowsCramMD5(stored)


@pytest.mark.parametrize(
    ("stored", "plaintext", "cram"),
    [
        ("{PLAIN}x", True, True),
        ("{PLAIN.HEX}78", True, True),
        ("x", True, True),  # default PLAIN
        (vector("CRAM-MD5"), False, True),
        (vector("HMAC-MD5"), False, True),
        (vector("SHA"), False, False),
        (vector("BLF-CRYPT"), False, False),
    ],
)
def test_allowsCramMD5(stored: str, plaintext: bool, cram: bool) -> None:
    assert isPlaintext(stored) is plaintext
    assert allowsCramMD5(stored) is cram
    assert allowsCramMD5("y", default="SHA") is False


# RFC 2195 section 2's example exchange.
CHALLENGE = b"<1896.697170952@postoffice.reston.mci.net>"
RESPONSE = b"b913a602c7eda7a495b4e6e7334d3890"


@pytest.mark.parametrize(
    ("stored", "challenge", "response", "expected"),
    [
        ("{PLAIN}tanstaaftanstaaf", CHALLENGE, RESPONSE, True),
        (vector("CRAM-MD5", "tanstaaftanstaaf"), CHALLENGE, RESPONSE, True),
        (vector("CRAM-MD5", "tanstaaftanstaaf"), CHALLENGE, RESPONSE.upper(), False),
        (vector("CRAM-MD5", "tanstaaftanstaaf"), b"<other@x>", RESPONSE, False),
        ("{PLAIN}tanstaaf", CHALLENGE, RESPONSE, False),
        (vector("CRAM-MD5.B64"), b"<2@x>", hmac.new(PW, b"<2@x>", "md5").hexdigest(), True),
        (vector("HMAC-MD5"), b"<3@x>", hmac.new(PW, b"<3@x>", "md5").hexdigest(), True),
        (vector("SHA"), b"<4@x>", hmac.new(PW, b"<4@x>", "md5").hexdigest(), False),
    ],
    ids=["plain", "cram", "upper-hex", "other-challenge", "wrong", "b64", "hmac", "sha"],
)
def test_verifyCramMD5(
    stored: str, challenge: bytes, response: bytes | str, expected: bool
) -> None:
    if isinstance(response, str):
        response = response.encode()
    assert verifyCramMD5(stored, challenge, response) is expected
    assert SchemeVerifier().verifyCramMD5(stored, challenge, response) is expected


def test_cramContextOfLongPassword() -> None:
    """HMAC hashes a key longer than a block first (RFC 2104 section 2)."""
    key = b"k" * 100
    stored = "{CRAM-MD5}" + _cram.cramContext(key).hex()
    assert verifyCramMD5(stored, b"<5@x>", hmac.new(key, b"<5@x>", "md5").hexdigest().encode())


@pytest.mark.parametrize("length", [0, 1, 55, 56, 63, 64, 65, 119, 120, 200])
def test_md5BlockFunction(length: int) -> None:
    """Our one piece of MD5 gives hashlib's digests across padding edges."""
    data = bytes(i % 251 for i in range(length))
    assert _cram._md5Resume(_cram._MD5_IV, data, done=0) == hashlib.md5(data).digest()


@pytest_twisted.ensureDeferred
async def test_slowHashesDoNotBlockCheapOnes(verifier: SchemeVerifier) -> None:
    """
    While eight argon2/bcrypt checks run in the pool, C{{PLAIN}} checks still
    answer at once and the reactor keeps ticking.
    """
    cheap: list[bool] = []
    ticks: list[float] = []

    def tick() -> None:
        ticks.append(time.monotonic())
        verifier.verify("{PLAIN}pass", b"pass").addCallback(cheap.append)

    schemes = ["ARGON2ID", "BLF-CRYPT"] * 3 + ["ARGON2I"] * 2
    slow = [verifier.verify(vector(scheme), PW) for scheme in schemes]
    answered: list[bool] = []
    for d in slow:
        d.addCallback(lambda ok: answered.append(ok) or ok)
    loop = task.LoopingCall(tick)
    loop.start(0.005)
    try:
        assert len(answered) < 8  # not computed inline
        assert await gatherResults(slow) == [True] * 8
    finally:
        loop.stop()
    assert len(cheap) == len(ticks)  # each answered within its own tick
    assert all(cheap)
    # Inline, the argon2 checks alone would stall the reactor for ~1 s with
    # at most 9 ticks; in the pool it ticks every few milliseconds.
    assert len(ticks) >= 20


@pytest_twisted.ensureDeferred
async def test_concurrencyIsBounded(monkeypatch: pytest.MonkeyPatch) -> None:
    lock = threading.Lock()
    active, most, workers = [0], [0], set()

    def check(raw: bytes, password: bytes) -> bool:
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
            workers.add(threading.current_thread())
        time.sleep(0.02)  # stands in for hashing, in a pool thread
        with lock:
            active[0] -= 1
        return raw == password

    monkeypatch.setitem(passwords._SCHEMES, "TEST-SLOW", passwords._Scheme(check, slow=True))
    verifier = SchemeVerifier(maxConcurrent=2)
    try:
        results = await gatherResults([verifier.verify("{TEST-SLOW}x", b"x") for _ in range(6)])
    finally:
        await verifier.stopService()
    assert results == [True] * 6
    assert most[0] == 2
    assert len(workers) <= 2 and threading.main_thread() not in workers
    assert _poolThreads() == []


@pytest_twisted.ensureDeferred
async def test_serviceStartsAndJoinsItsPool() -> None:
    verifier = SchemeVerifier()
    verifier.startService()
    assert verifier.running
    pending = [verifier.verify(vector("BLF-CRYPT"), PW) for _ in range(3)]
    answered: list[bool] = []
    for d in pending:
        d.addCallback(answered.append)
    await verifier.stopService()  # waits for the checks in flight
    assert answered == [True] * 3
    assert _poolThreads() == []


@pytest_twisted.ensureDeferred
async def test_givenPoolIsLeftToItsOwner() -> None:
    pool = ThreadPool(0, 2, "test-owner")
    pool.start()
    try:
        verifier = SchemeVerifier(threadPool=pool)
        verifier.startService()
        assert await verifier.verify(vector("SHA512-CRYPT"), PW) is True
        await verifier.stopService()
        assert pool.started
        assert await verifier.verify(vector("SHA512-CRYPT"), PW) is True
    finally:
        pool.stop()


YESCRYPT = "{CRYPT}$y$j9T$abcdefghijklmnop$tPZHPt2RDskBwX0BzpdM161VbNQjHixSpBm9bcbRNt7"


@pytest.mark.parametrize(("password", "ok"), [(b"pass", True), (b"wrong", False)])
@pytest_twisted.ensureDeferred
async def test_yescryptThroughSystemCrypt(password, ok) -> None:
    """Debian's default crypt(3) hash, made with crypt.crypt('pass', '$y$j9T$abcdefghijklmnop')."""
    pytest.importorskip("crypt")
    verifier = SchemeVerifier()
    try:
        assert await verifier.verify(YESCRYPT, password) is ok
    finally:
        await verifier.stopService()


def _cost(stored: str) -> object:
    """What makes checking C{stored} slow: bcrypt cost, crypt rounds, argon2 parameters."""
    import argon2
    from passlib.hash import sha256_crypt, sha512_crypt

    value = stored.split("}", 1)[1]
    if value.startswith("$2"):
        return value[:7]
    if value.startswith(("$5$", "$6$")):
        handler = sha256_crypt if value.startswith("$5$") else sha512_crypt
        return value[:3], handler.from_string(value).rounds
    if value.startswith("$argon2"):
        return argon2.extract_parameters(value)
    if value.startswith("$y$"):
        return value.split("$")[2]  # yescrypt's parameters
    if stored.startswith("{PBKDF2}"):
        return int(value.split("$")[3])
    return value[:3] if value.startswith("$1$") else len(value)  # MD5-crypt, DES: fixed


def _cheapArgon2(scheme: str) -> str:
    """An argon2 value with small parameters (doveadm's take ~0.3 s a check)."""
    import argon2

    kind = argon2.Type.I if scheme == "ARGON2I" else argon2.Type.ID
    hasher = argon2.PasswordHasher(time_cost=1, memory_cost=256, parallelism=1, type=kind)
    return "{" + scheme + "}" + hasher.hash("x")


SLOW_MODELS = [
    *(
        pytest.param(stored, id=s)
        for s, stored in {
            s: stored
            for s, _, stored in ALL_VECTORS
            if passwords._SCHEMES[s.split(".")[0]].slow and not s.startswith("ARGON2")
        }.items()
    ),
    pytest.param(_cheapArgon2("ARGON2I"), id="ARGON2I"),
    pytest.param(_cheapArgon2("ARGON2ID"), id="ARGON2ID"),
    pytest.param("{SHA512-CRYPT}$6$rounds=20000$abcdefgh$" + "x" * 86, id="SHA512-CRYPT-rounds"),
    pytest.param("{PBKDF2}$1$salt$20000$" + "0" * 40, id="PBKDF2-rounds"),
    pytest.param(
        YESCRYPT,  # through the system's crypt(3)
        id="yescrypt",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("crypt") is None, reason="no crypt module"
        ),
    ),
]


@pytest.mark.parametrize("model", SLOW_MODELS)
@pytest_twisted.ensureDeferred
async def test_decoyHasTheSchemeAndCostOfItsModel(verifier: SchemeVerifier, model: str) -> None:
    decoy = await verifier.decoyLike(model)
    assert decoy.split("}")[0] == model.split("}")[0]
    assert _cost(decoy) == _cost(model)
    assert decoy != model
    assert await verifier.verify(decoy, PW) is False


@pytest.mark.parametrize(
    "model",
    ["{PLAIN}pw", "{SHA256.HEX}" + "0" * 64, "pw"],
    ids=["PLAIN", "SHA256.HEX", "no-prefix"],
)
def test_decoyOfACheapSchemeIsPlain(model: str) -> None:
    decoy = passwords.decoyLike(model)
    assert decoy.startswith("{PLAIN}") and decoy != "{PLAIN}pw"


@pytest_twisted.ensureDeferred
async def test_queuedAndHashingCountTheChecksOutsideAndInsideThePool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the hashing gauges of C{--metrics} read."""
    release = threading.Event()

    def check(raw: bytes, password: bytes) -> bool:
        release.wait(10)
        return raw == password

    monkeypatch.setitem(passwords._SCHEMES, "TEST-SLOW", passwords._Scheme(check, slow=True))
    verifier = SchemeVerifier(maxConcurrent=2)
    try:
        pending = [verifier.verify("{TEST-SLOW}x", b"x") for _ in range(5)]
        assert (verifier.queued, verifier.hashing) == (3, 2)
        release.set()
        await gatherResults(pending)
        assert (verifier.queued, verifier.hashing) == (0, 0)
    finally:
        release.set()
        await verifier.stopService()
