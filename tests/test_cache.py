"""
The authentication cache (Dovecot's auth_cache_*): through the real server
over loopback, in front of a real SQLite file and a real PostgreSQL server,
with time on an injected clock; SIGHUP sent for real.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import attrs
import bcrypt
import pytest
import pytest_twisted
from conftest import examplePostgres, exampleUsers
from sqlbackends import PostgresServer, makeSQLite, rowsFor, writeConfig
from twisted.internet import reactor, task
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent
from wiretable import FAILED, REFER, UNAVAILABLE

from imapreferral.limits import ConnectionLimiter
from imapreferral.login.checker import PassdbChecker
from imapreferral.login.context import LoginContext
from imapreferral.login.errors import TemporaryFailure
from imapreferral.login.fields import PassdbReply
from imapreferral.networks import NetworkList
from imapreferral.passdbs import passdbFromString
from imapreferral.passdbs.cache import (
    ENTRY_OVERHEAD,
    AuthCache,
    CachedPassdb,
    parseDuration,
    parseSize,
)
from imapreferral.passdbs.static import StaticPassdb
from imapreferral.passwords import SchemeVerifier
from imapreferral.tap import Options, ReferralService, makeService
from imapreferral.testing import MemoryPassdb, ServerHarness

TTL = 600.0
NEGATIVE_TTL = 60.0


def referral(user: bytes, host: bytes) -> bytes:
    return b"NO [REFERRAL imap://" + user + b";AUTH=PLAIN@" + host + b"/] " + REFER


@pytest.fixture(scope="module")
def postgres():
    """Our own cluster, not the session's: a test here stops it for real."""
    yield from examplePostgres()


class Database:
    """One of the real databases: its passdb config, and a way to change rows."""

    def __init__(self, kind: str, config: str, execute) -> None:
        self.kind = kind
        self.config = config
        self.execute = execute


def _sqlite(directory: Path) -> Database:
    path = str(directory / "users.sqlite")
    makeSQLite(path, rowsFor(exampleUsers()))

    def execute(sql: str, *params: object) -> None:
        with sqlite3.connect(path) as db:
            db.execute(sql.replace("%s", "?"), params)

    return Database("sqlite", writeConfig(str(directory / "sqlite.conf"), "sqlite", path), execute)


def _postgres(directory: Path, server: PostgresServer) -> Database:
    import psycopg

    def execute(sql: str, *params: object) -> None:
        with psycopg.connect(server.conninfo, autocommit=True) as conn:
            conn.execute(sql, params)

    config = writeConfig(str(directory / "pgsql.conf"), "pgsql", server.conninfo)
    return Database("pgsql", config, execute)


@pytest.fixture(params=["sqlite", "pgsql"])
def database(request, tmp_path):
    """A real database holding the example users; rows changed here are put back."""
    if request.param == "sqlite":
        yield _sqlite(tmp_path)
        return
    db = _postgres(tmp_path, request.getfixturevalue("postgres"))
    yield db
    db.execute("DELETE FROM users")
    for row in rowsFor(exampleUsers()):
        db.execute(f"INSERT INTO users VALUES ({', '.join(['%s'] * len(row))})", *row)


class Server:
    """A harness over one passdb behind an auth cache on its own clock."""

    def __init__(self, passdb, cacheClock: task.Clock, **cacheArgs) -> None:
        self.passdb = passdb
        self.clock = cacheClock
        self.cache = AuthCache(cacheArgs.pop("maxSize", 1 << 20), clock=cacheClock, **cacheArgs)
        self.cached = CachedPassdb(passdb, self.cache, "passdb0")
        self.verifier = SchemeVerifier()
        self.harness = ServerHarness.forChecker(
            PassdbChecker([self.cached], verifier=self.verifier),
            failureDelay=0,
            authPenaltyCap=0,
        )

    async def start(self) -> None:
        self.verifier.startService()
        await self.harness.start()

    async def stop(self) -> None:
        await self.harness.stop()
        await self.verifier.stopService()

    async def login(self, user: bytes, password: bytes = b"pass") -> bytes:
        """One connection, one LOGIN: the tagged answer without its tag."""
        client = await self.harness.connect()
        try:
            (reply,) = await client.command(b"a LOGIN " + user + b" " + password)
            return reply.removeprefix(b"a ")
        finally:
            await client.close()


@pytest_twisted.async_yield_fixture
async def sqlServer(database):
    passdb = passdbFromString(f"sql:{database.config}", timeout=2)
    passdb.startService()
    server = Server(passdb, task.Clock(), ttl=TTL, negativeTtl=NEGATIVE_TTL)
    await server.start()
    yield server
    await server.stop()
    passdb.stopService()


@pytest_twisted.ensureDeferred
async def test_changedRowIsSeenOnlyAfterTheTtl(sqlServer, database):
    assert await sqlServer.login(b"refnl") == referral(b"refnl", b"imap2.example.com")
    database.execute("UPDATE users SET host = %s WHERE userid = %s", "imap9.example.com", "refnl")
    assert await sqlServer.login(b"refnl") == referral(b"refnl", b"imap2.example.com")
    sqlServer.clock.advance(TTL - 1)
    assert await sqlServer.login(b"refnl") == referral(b"refnl", b"imap2.example.com")
    sqlServer.clock.advance(2)
    assert await sqlServer.login(b"refnl") == referral(b"refnl", b"imap9.example.com")


@pytest_twisted.ensureDeferred
async def test_unknownUserIsCachedForTheNegativeTtl(sqlServer, database):
    assert await sqlServer.login(b"newuser") == FAILED
    database.execute(
        "INSERT INTO users (userid, password, host, nologin) VALUES (%s, %s, %s, %s)",
        "newuser", "{PLAIN}pass", "imap2.example.com", "Y",
    )  # fmt: skip
    assert await sqlServer.login(b"newuser") == FAILED
    sqlServer.clock.advance(NEGATIVE_TTL + 1)
    assert await sqlServer.login(b"newuser") == referral(b"newuser", b"imap2.example.com")


@pytest_twisted.ensureDeferred
async def test_newPasswordAfterAGoodLoginIsCheckedWithTheDatabase(sqlServer, database):
    """Dovecot: a mismatch after a success means the password may have changed."""
    assert await sqlServer.login(b"refnl") == referral(b"refnl", b"imap2.example.com")
    database.execute("UPDATE users SET password = %s WHERE userid = %s", "{PLAIN}new", "refnl")
    assert await sqlServer.login(b"refnl", b"new") == referral(b"refnl", b"imap2.example.com")
    assert await sqlServer.login(b"refnl", b"pass") == FAILED


def _counting(users=None) -> MemoryPassdb:
    return MemoryPassdb(exampleUsers() if users is None else users)


@pytest_twisted.ensureDeferred
async def test_repeatedWrongPasswordsAreAnsweredFromTheCache():
    passdb = _counting()
    server = Server(passdb, task.Clock(), ttl=TTL, negativeTtl=NEGATIVE_TTL)
    await server.start()
    try:
        assert await server.login(b"refnl", b"wrong") == FAILED
        assert await server.login(b"refnl", b"wrong") == FAILED
        assert await server.login(b"refnl", b"wrong") == FAILED
        assert len(passdb.lookups) == 1
        # The entry was kept: the right password is answered from it too.
        assert await server.login(b"refnl") == referral(b"refnl", b"imap2.example.com")
        assert len(passdb.lookups) == 1
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_wrongPasswordPastTheNegativeTtlAsksThePassdbAgain():
    passdb = _counting()
    server = Server(passdb, task.Clock(), ttl=TTL, negativeTtl=NEGATIVE_TTL)
    await server.start()
    try:
        assert await server.login(b"refnl", b"wrong") == FAILED
        server.clock.advance(NEGATIVE_TTL + 1)
        assert await server.login(b"refnl", b"wrong") == FAILED
        assert len(passdb.lookups) == 2
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_zeroNegativeTtlCachesNoUnknownUser():
    passdb = _counting()
    server = Server(passdb, task.Clock(), ttl=TTL, negativeTtl=0)
    await server.start()
    try:
        assert await server.login(b"nosuchuser") == FAILED
        assert await server.login(b"nosuchuser") == FAILED
        assert len(passdb.lookups) == 2
        assert len(server.cache) == 0
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_cacheHoldsTheStoredHashNeverThePassword():
    stored = "{BLF-CRYPT}" + bcrypt.hashpw(b"s3cret-Pw", bcrypt.gensalt(4)).decode()
    users = {"hashed": PassdbReply(password=stored, host="imap2.example.com", nologin=True)}
    server = Server(MemoryPassdb(users), task.Clock())
    await server.start()
    try:
        assert await server.login(b"hashed", b"s3cret-Pw") == referral(
            b"hashed", b"imap2.example.com"
        )
        assert await server.login(b"hashed", b"s3cret-Pw") == referral(
            b"hashed", b"imap2.example.com"
        )
    finally:
        await server.stop()
    (entry,) = server.cache._entries.values()
    assert entry.reply.password == stored
    everything = repr(
        [(k, attrs.astuple(e, recurse=True)) for k, e in server.cache._entries.items()]
    )
    assert "s3cret-Pw" not in everything


@pytest_twisted.ensureDeferred
async def test_postgresOutageWithAWarmCacheAnswersCachedUsers(postgres, tmp_path, logged):
    """
    PostgreSQL stopped for real with the cache warm and its entries expired:
    cached users are still answered, an uncached user gets a temporary
    failure, and so does a wrong password against an entry older than the
    negative TTL (Dovecot: the password may have changed since); the fallback
    is two log lines however many logins it answers.
    """
    config = _postgres(tmp_path, postgres).config
    passdb = passdbFromString(f"sql:{config}", timeout=2)
    passdb.startService()
    server = Server(passdb, task.Clock(), ttl=TTL, negativeTtl=NEGATIVE_TTL)
    await server.start()
    try:
        assert await server.login(b"refnl") == referral(b"refnl", b"imap2.example.com")
        assert await server.login(b"ref6", b"wrong") == FAILED
        await deferToThread(postgres.stop)
        try:
            server.clock.advance(TTL + 1)
            for _ in range(3):
                assert await server.login(b"refnl") == referral(b"refnl", b"imap2.example.com")
            assert await server.login(b"ref6", b"wrong") == UNAVAILABLE
            assert await server.login(b"refport") == UNAVAILABLE
        finally:
            await deferToThread(postgres.start)
        server.clock.advance(1)
        assert await server.login(b"refport") == referral(b"refport", b"imap2.example.com:1143")
    finally:
        await server.stop()
        passdb.stopService()
    lines = [(e["log_level"].name, formatEvent(e)) for e in logged]
    cacheLines = [line for line in lines if line[1].startswith("auth cache:")]
    assert cacheLines == [
        (
            "warn",
            f"auth cache: passdb <SQLPassdb pgsql {config}> failing (SQL passdb unavailable); "
            "answering from expired cache entries",
        ),
        (
            "info",
            f"auth cache: passdb <SQLPassdb pgsql {config}> answering again after 1.0 s; "
            "3 logins answered from expired cache entries meanwhile",
        ),
    ]
    assert not [line for line in lines if len(line[1].splitlines()) != 1]


def test_leastRecentlyUsedEntryGoesFirst():
    clock = task.Clock()
    reply = PassdbReply(password="{PLAIN}x", host="h")
    size = ENTRY_OVERHEAD + len(repr(("p", "aaaa"))) + len("{PLAIN}x") + len("h")
    cache = AuthCache(3 * size, clock=clock)
    for name in ("aaaa", "bbbb", "cccc"):
        cache.insert(("p", name), reply)
    assert cache.lookup(("p", "aaaa"))[0] is not None  # now the most recently used
    cache.insert(("p", "dddd"), reply)
    assert [cache.peek(("p", n)) is not None for n in ("aaaa", "bbbb", "cccc", "dddd")] == [
        True, False, True, True,
    ]  # fmt: skip
    assert cache.used <= cache.maxSize


def test_entrySizeEstimateIsNearWhatPythonSpends():
    """C{maxSize} bounds real memory: the estimate is within 2x of tracemalloc's count."""
    cache = AuthCache(1 << 30, clock=task.Clock())
    count = 2000
    replies = [
        PassdbReply.fromFields(
            [("host", f"imap{i}.example.com"), ("nologin", None), ("reason", "Moved")],
            password=f"{{SHA256-CRYPT}}$5$rounds=5000$salt{i:06d}$" + "x" * 43,
        )
        for i in range(count)
    ]
    keys = [("passdb0", f"user{i:06d}@example.com") for i in range(count)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for key, reply in zip(keys, replies, strict=True):
            cache.insert(key, reply)
        spent = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # The replies and keys were made before counting; add what they hold.
    spent += sum(_deepSize(r) + _deepSize(k) for r, k in zip(replies, keys, strict=True))
    assert 0.5 <= cache.used / spent <= 2, (cache.used / count, spent / count)


def _deepSize(value: object) -> int:
    if attrs.has(type(value)):
        return sys.getsizeof(value) + sum(
            _deepSize(getattr(value, a.name)) for a in attrs.fields(type(value))
        )
    if isinstance(value, tuple):
        return sys.getsizeof(value) + sum(_deepSize(v) for v in value)
    if isinstance(value, str) and len(value) > 1:
        return sys.getsizeof(value)
    return 0  # small ints, None, bools and 1-character strings are shared


def test_flushEmptiesTheCache():
    cache = AuthCache(1 << 20, clock=task.Clock())
    cache.insert(("p", "a"), PassdbReply(password="{PLAIN}x"))
    cache.insert(("p", "b"), None)
    assert cache.flush() == 2
    assert len(cache) == 0 and cache.used == 0


@pytest.mark.parametrize(
    ("text", "size"),
    [("0", 0), ("1024", 1024), ("10M", 10 << 20), ("10 MB", 10 << 20), ("512k", 512 << 10),
     ("1G", 1 << 30), ("2 kB", 2048)],
)  # fmt: skip
def test_sizeAsDovecotWritesIt(text, size):
    assert parseSize(text) == size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("3600", 3600), ("1 hour", 3600), ("1h", 3600), ("30 secs", 30), ("5 mins", 300),
     ("2d", 172800), ("0", 0), ("1.5 s", 1.5)],
)  # fmt: skip
def test_durationAsDovecotWritesIt(text, seconds):
    assert parseDuration(text) == seconds


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--auth-cache-size", "10X"],
         "imapreferral: --auth-cache-size 10X: not a size (bytes, or a number with k, M or G, "
         "e.g. 10M)"),
        (["--auth-cache-ttl", "soon"],
         "imapreferral: --auth-cache-ttl soon: not a time (seconds, or a number with s, min, "
         "hour or day)"),
        (["--auth-cache-negative-ttl", "-1"],
         "imapreferral: --auth-cache-negative-ttl -1: not a time (seconds, or a number with s, "
         "min, hour or day)"),
    ],
)  # fmt: skip
def test_badCacheOptionIsOneLine(args, message):
    with pytest.raises(SystemExit) as e:
        Options().parseOptions(args)
    assert str(e.value) == message


def _service(*args: str) -> ReferralService:
    options = Options()
    options.parseOptions(list(args))
    return makeService(options)


def _checkerPassdbs(service: ReferralService) -> tuple:
    """The passdbs the service's checker consults (one checker, registered per interface)."""
    (checker,) = {id(c): c for c in service.factory.portal.checkers.values()}.values()
    return checker.passdbs


def test_sizeZeroIsNoCache(tmp_path):
    service = _service("--auth-cache-size", "0")
    assert service.authCache is None
    assert not [p for p in _checkerPassdbs(service) if isinstance(p, CachedPassdb)]


def test_cacheSizeCachesEveryPassdbButStatic(tmp_path):
    service = _service(
        "--auth-cache-size", "10M", "--auth-cache-ttl", "5 mins",
        "--passdb", "static:nopassword host=imap2.example.com nologin",
        "--passdb", f"passwd-file:{Path(__file__).parent.parent / 'imapreferral/examples/users.passwd'}",
    )  # fmt: skip
    assert (service.authCache.maxSize, service.authCache.ttl) == (10 << 20, 300)
    assert service.authCache.negativeTtl == 3600
    static, cached = _checkerPassdbs(service)
    assert isinstance(static, StaticPassdb) and isinstance(cached, CachedPassdb)


@pytest_twisted.ensureDeferred
async def test_sighupFlushesAndChainsToThePreviousHandler(logged):
    seen: list[int] = []
    previous = signal.signal(signal.SIGHUP, lambda signum, frame: seen.append(signum))
    try:
        installed = signal.getsignal(signal.SIGHUP)
        cache = AuthCache(1 << 20, clock=task.Clock())
        cache.insert(("p", "a"), None)
        service = ReferralService(
            "test", ConnectionLimiter(10, 10, NetworkList.fromOption("")), None, cache
        )
        service.startService()
        try:
            os.kill(os.getpid(), signal.SIGHUP)
            for _ in range(500):
                if len(cache) == 0:
                    break
                await task.deferLater(reactor, 0.01, lambda: None)
        finally:
            await service.stopService()
        assert len(cache) == 0 and seen == [signal.SIGHUP]
        assert signal.getsignal(signal.SIGHUP) is installed
        assert [formatEvent(e) for e in logged if "auth cache" in formatEvent(e)] == [
            "auth cache flushed: 1 entries"
        ]
    finally:
        signal.signal(signal.SIGHUP, previous)


TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def _freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loginOnce(port: int, user: bytes) -> bytes:
    deadline = time.monotonic() + 20
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            break
        except OSError:
            assert time.monotonic() < deadline, "twistd did not start listening"
            time.sleep(0.1)
    with sock:
        f = sock.makefile("rb")
        assert f.readline().startswith(b"* OK")
        sock.sendall(b"a LOGIN " + user + b" pass\r\n")
        return f.readline().rstrip(b"\r\n").removeprefix(b"a ")


def test_sighupToTwistdShowsAChangedRowAtOnce(tmp_path):
    db = _sqlite(tmp_path)
    port = _freePort()
    log = tmp_path / "twistd.log"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent))
    proc = subprocess.Popen(
        [*TWISTD, "-n", "--pidfile=", "--logfile", str(log), "imapreferral",
         "--listen", f"tcp:{port}:interface=127.0.0.1", "--passdb", f"sql:{db.config}",
         "--auth-cache-size", "1M", "--auth-failure-delay", "0"],
        cwd=str(tmp_path), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert _loginOnce(port, b"refnl") == referral(b"refnl", b"imap2.example.com")
        db.execute("UPDATE users SET host = %s WHERE userid = %s", "imap9.example.com", "refnl")
        assert _loginOnce(port, b"refnl") == referral(b"refnl", b"imap2.example.com")
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "auth cache flushed: 1 entries" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert _loginOnce(port, b"refnl") == referral(b"refnl", b"imap9.example.com")
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_sighupToTheFirstProcessFlushesEveryWorker(tmp_path):
    port = _freePort()
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent))
    with open(out, "wb") as f:
        proc = subprocess.Popen(
            [*TWISTD, "-n", "--pidfile=", "imapreferral", "--workers", "2",
             "--listen", f"tcp:{port}:interface=127.0.0.1", "--auth-cache-size", "1M"],
            cwd=str(tmp_path), env=env, stdout=f, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while out.read_text().count("imapreferral serving") < 2:
            assert time.monotonic() < deadline and proc.poll() is None, out.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGHUP)
        while out.read_text().count("auth cache flushed: 0 entries") < 2:
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert out.read_text().count("auth cache flushed") == 2


@pytest_twisted.ensureDeferred
async def test_lookupWithoutAPasswordUsesTheSameEntries():
    """L{CachedPassdb.lookup} (no password to check): live entries, then expired ones on failure."""
    passdb = _counting()
    clock = task.Clock()
    cached = CachedPassdb(passdb, AuthCache(1 << 20, ttl=TTL, clock=clock), "passdb0")
    context = LoginContext()
    first = await cached.lookup("refnl", context)
    assert first is passdb.users["refnl"]
    assert await cached.lookup("refnl", context) is first and len(passdb.lookups) == 1
    clock.advance(TTL + 1)
    passdb.error = TemporaryFailure("down")
    assert await cached.lookup("refnl", context) is first and len(passdb.lookups) == 2
    with pytest.raises(TemporaryFailure):
        await cached.lookup("plain", context)
