"""
The SQL passdb against real databases: a SQLite file and a throwaway
PostgreSQL server, both through the real IMAP server over loopback.
"""

from __future__ import annotations

import re
import time
from collections import Counter

import pytest
import pytest_twisted
from conftest import exampleUsers
from sqlbackends import (
    QUERY,
    makeSQLite,
    rowsFor,
    waitForPort,
    writeConfig,
)
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher
from wiretable import FAILED, REFER, REFERRAL_ROWS, UNAVAILABLE

from imapreferral.login.checker import PassdbChecker
from imapreferral.login.context import LoginContext
from imapreferral.passdbs import PassdbConfigError, passdbFromString
from imapreferral.testing import ServerHarness, answerAfterDelay

SEED1 = """\
driver = sqlite
connect = users.sqlite
password_query = SELECT password, host, 'Y' as nologin \\
    FROM users WHERE userid = '%u'
"""

SEED2_VERBATIM = """\
driver = sqlite
connect = users.sqlite
password_query = SELECT NULL AS password, 'Y' AS nopassword \\
    'imap2.example.com' AS host, \\
    'This server is down, try another one.' AS reason, \\
    'Y' AS nologin, 'Y' AS nodelay
"""

SEED2_FIXED = SEED2_VERBATIM.replace("'Y' AS nopassword \\", "'Y' AS nopassword, \\")


@pytest.fixture
def sqliteDir(tmp_path):
    makeSQLite(str(tmp_path / "users.sqlite"), rowsFor(exampleUsers()))
    return tmp_path


@pytest.fixture(params=["sqlite", "pgsql"])
def sqlConfig(request, sqliteDir):
    if request.param == "sqlite":
        return writeConfig(str(sqliteDir / "sqlite.conf"), "sqlite", "users.sqlite")
    postgres = request.getfixturevalue("postgres")
    return writeConfig(str(sqliteDir / "pgsql.conf"), "pgsql", postgres.conninfo)


async def _harness(passdb, clock, **checkerArgs):
    passdb.startService()
    harness = ServerHarness.forChecker(PassdbChecker([passdb], **checkerArgs), clock=clock)
    return await harness.start()


async def _stop(harness, passdb):
    await harness.stop()
    passdb.stopService()


@pytest_twisted.async_yield_fixture
async def sqlServer(sqlConfig, clock):
    passdb = passdbFromString(f"sql:{sqlConfig}", timeout=2)
    harness = await _harness(passdb, clock)
    yield harness
    await _stop(harness, passdb)


@pytest.mark.parametrize("row", REFERRAL_ROWS)
@pytest_twisted.ensureDeferred
async def test_referralTableThroughSQL(sqlServer, row):
    user, template = REFERRAL_ROWS[row]
    client = await sqlServer.connect()
    try:
        reply = await client.command(b"a LOGIN " + user + b" pass")
        assert reply == [b"a " + template.replace(b"{mech}", b"PLAIN")]
    finally:
        await client.close()


@pytest.mark.parametrize("user", [b"refnl", b"nosuchuser"])
@pytest_twisted.ensureDeferred
async def test_wrongPasswordThroughSQLFailsAfterDelay(sqlServer, clock, user):
    client = await sqlServer.connect()
    try:
        assert (
            await answerAfterDelay(client, clock, b"a LOGIN " + user + b" wrong\r\n", 2.0)
            == b"a " + FAILED
        )
    finally:
        await client.close()


INJECTIONS = [b"\"x' OR '1'='1\"", b'"x\\\\\'; DROP TABLE users; --"', b'"%u\' OR 1=1 --"']


@pytest.mark.parametrize("user", INJECTIONS, ids=["or-true", "drop-table", "percent"])
@pytest_twisted.ensureDeferred
async def test_sqlInjectionFindsNobody(sqlServer, clock, user):
    client = await sqlServer.connect()
    try:
        assert (
            await answerAfterDelay(client, clock, b"a LOGIN " + user + b" pass\r\n", 2.0)
            == b"a " + FAILED
        )
        assert await client.command(b"b LOGIN refnl pass") == [
            b"b NO [REFERRAL imap://refnl;AUTH=PLAIN@imap2.example.com/] " + REFER
        ]  # the table is still there
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_seedQueryOneVerbatim(sqliteDir, clock):
    config = sqliteDir / "seed1.conf"
    config.write_text(SEED1)
    passdb = passdbFromString(f"sql:{config}")
    harness = await _harness(passdb, clock)
    client = await harness.connect()
    try:
        assert await client.command(b"a LOGIN refnl pass") == [
            b"a NO [REFERRAL imap://refnl;AUTH=PLAIN@imap2.example.com/] " + REFER
        ]
        assert await client.command(b"b LOGIN plain pass") == [
            b"b NO [CONTACTADMIN] Login disabled for this user"  # NULL host, as Dovecot
        ]
        assert (
            await answerAfterDelay(client, clock, b"c LOGIN refnl wrong\r\n", 2.0)
            == b"c " + FAILED
        )
    finally:
        await client.close()
        await _stop(harness, passdb)


def test_seedQueryTwoVerbatimIsRefusedAtStart(sqliteDir):
    config = sqliteDir / "seed2.conf"
    config.write_text(SEED2_VERBATIM)
    with pytest.raises(PassdbConfigError) as e:
        passdbFromString(f"sql:{config}")
    message = str(e.value)
    assert message.startswith(f"{config}:3: password_query is refused by the database: ")
    assert "syntax error" in message and "'imap2.example.com'" in message
    assert "SELECT NULL AS password, 'Y' AS nopassword 'imap2.example.com' AS host" in message
    assert "\n" not in message


@pytest.mark.parametrize("password", [b"anything", b'""'])
@pytest_twisted.ensureDeferred
async def test_seedQueryTwoFixedRefersEveryone(sqliteDir, clock, password):
    config = sqliteDir / "seed2.conf"
    config.write_text(SEED2_FIXED)
    passdb = passdbFromString(f"sql:{config}")
    harness = await _harness(passdb, clock)
    client = await harness.connect()
    try:
        assert await client.command(b"a LOGIN whoever " + password) == [
            b"a NO [REFERRAL imap://whoever;AUTH=PLAIN@imap2.example.com/] "
            b"This server is down, try another one."
        ]
    finally:
        await client.close()
        await _stop(harness, passdb)


@pytest_twisted.ensureDeferred
async def test_variablesAndUserColumn(sqliteDir, clock):
    """%Ln, %Ld and %r bind as values; the user column normalises the URL's name."""
    config = writeConfig(
        str(sqliteDir / "vars.conf"),
        "sqlite",
        "users.sqlite",
        query="SELECT password, userid AS user, host, 'Y' AS nologin FROM users "
        "WHERE userid = '%Ln@%Ld' AND '%r' = '127.0.0.1' AND '%s' = 'imap'",
    )
    passdb = passdbFromString(f"sql:{config}")
    harness = await _harness(passdb, clock, lowercaseUsernames=False)
    client = await harness.connect()
    try:
        assert await client.command(b"a LOGIN U@Example.COM pass") == [
            b"a NO [REFERRAL imap://u%40example.com;AUTH=PLAIN@imap2.example.com/] " + REFER
        ]
    finally:
        await client.close()
        await _stop(harness, passdb)


def _postgresConfig(tmp_path, postgres, query=None):
    extra = {} if query is None else {"query": query}
    return writeConfig(str(tmp_path / "pg.conf"), "pgsql", postgres.conninfo, **extra)


@pytest_twisted.ensureDeferred
async def test_postgresDownAndBack(postgres, tmp_path, clock):
    passdb = passdbFromString(f"sql:{_postgresConfig(tmp_path, postgres)}", timeout=2)
    harness = await _harness(passdb, clock)
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    client = await harness.connect()
    referral = [b"NO [REFERRAL imap://refnl;AUTH=PLAIN@imap2.example.com/] " + REFER]
    try:
        assert await client.command(b"a LOGIN refnl pass") == [b"a " + referral[0]]
        await deferToThread(postgres.stop)
        for tag in (b"b", b"c", b"d"):
            started = time.monotonic()
            assert await client.command(tag + b" LOGIN refnl pass") == [tag + b" " + UNAVAILABLE]
            assert time.monotonic() - started < 2.5
        await deferToThread(postgres.start)
        await deferToThread(waitForPort, postgres.port, True)
        assert await client.command(b"e LOGIN refnl pass") == [b"e " + referral[0]]
    finally:
        globalLogPublisher.removeObserver(events.append)
        await client.close()
        await _stop(harness, passdb)
    downs = [e for e in events if "unavailable:" in str(e.get("log_format", "")) or
             e.get("log_format") == "SQL passdb {path} unavailable: {problem}"]  # fmt: skip
    assert len(downs) == 1
    assert [e["failed"] for e in events if "back after" in e.get("log_format", "")] == [3]


@pytest_twisted.ensureDeferred
async def test_postgresSlowQueryTimesOut(postgres, tmp_path, clock):
    query = (
        "SELECT password, host, 'Y' AS nologin FROM users, "
        "pg_sleep(CASE WHEN '%u' = 'refnl' THEN 5 ELSE 0 END) WHERE userid = '%u'"
    )
    passdb = passdbFromString(f"sql:{_postgresConfig(tmp_path, postgres, query)}", timeout=0.5)
    harness = await _harness(passdb, clock)
    client = await harness.connect()
    try:
        started = time.monotonic()
        assert await client.command(b"a LOGIN refnl pass") == [b"a " + UNAVAILABLE]
        assert time.monotonic() - started < 2
    finally:
        await client.close()
        await _stop(harness, passdb)


def test_postgresQueryErrorIsRefusedAtStart(postgres, tmp_path):
    config = _postgresConfig(tmp_path, postgres, "SELECT password FROM nosuchtable WHERE u = '%u'")
    with pytest.raises(PassdbConfigError, match='relation "nosuchtable" does not exist'):
        passdbFromString(f"sql:{config}")


@pytest_twisted.ensureDeferred
async def test_sqlitePathWithSpacesAndHash(tmp_path, clock):
    directory = tmp_path / "my mail #1"
    directory.mkdir()
    makeSQLite(str(directory / "users.sqlite"), rowsFor(exampleUsers()))
    config = writeConfig(str(directory / "c.conf"), "sqlite", '"users.sqlite"')
    passdb = passdbFromString(f"sql:{config}")
    harness = await _harness(passdb, clock)
    client = await harness.connect()
    try:
        assert (await client.command(b"a LOGIN refnl pass"))[0].startswith(b"a NO [REFERRAL ")
    finally:
        await client.close()
        await _stop(harness, passdb)


def test_missingSQLiteFileIsNotCreated(tmp_path):
    config = writeConfig(str(tmp_path / "c.conf"), "sqlite", "nope.sqlite")
    with pytest.raises(PassdbConfigError, match="cannot open SQLite database"):
        passdbFromString(f"sql:{config}")
    assert not (tmp_path / "nope.sqlite").exists()


@pytest_twisted.ensureDeferred
async def test_queryWithoutPasswordColumnIsTemporaryFailure(sqliteDir, clock):
    config = writeConfig(
        str(sqliteDir / "nopw.conf"),
        "sqlite",
        "users.sqlite",
        query="SELECT host, 'Y' AS nologin FROM users WHERE userid = '%u'",
    )
    passdb = passdbFromString(f"sql:{config}")
    harness = await _harness(passdb, clock)
    client = await harness.connect()
    try:
        assert await client.command(b"a LOGIN refnl pass") == [b"a " + UNAVAILABLE]
    finally:
        await client.close()
        await _stop(harness, passdb)


def test_badPostgresConninfoIsRefusedAtStart(postgres, tmp_path):
    config = writeConfig(str(tmp_path / "bad.conf"), "pgsql", postgres.conninfo + " bogus=1")
    with pytest.raises(PassdbConfigError, match="is not usable"):
        passdbFromString(f"sql:{config}")


@pytest_twisted.ensureDeferred
async def test_nonUTF8NameIsUnknownNotAnOutage(sqlServer, clock):
    client = await sqlServer.connect()
    try:
        assert await answerAfterDelay(client, clock, b"a LOGIN \xff x\r\n", 2.0) == b"a " + FAILED
        assert (await client.command(b"b LOGIN refnl pass"))[0].startswith(b"b NO [REFERRAL ")
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_clientLeavingMidLookupIsNotAnOutage(sqliteDir):
    from twisted.internet.defer import CancelledError

    from imapreferral.login.context import LoginContext

    config = writeConfig(str(sqliteDir / "c.conf"), "sqlite", "users.sqlite")
    passdb = passdbFromString(f"sql:{config}")
    passdb.startService()
    try:
        lookup = passdb.lookup("refnl", LoginContext())
        lookup.cancel()  # what the server does when the client disconnects
        with pytest.raises(CancelledError):
            await lookup
        assert passdb._problem is None  # not marked down...
        assert (await passdb.lookup("refnl", LoginContext())).host == "imap2.example.com"
    finally:
        passdb.stopService()


@pytest.mark.parametrize(
    "connect",
    ["host=127.0.0.1 port=1 password=secret bogus", "host=127.0.0.1 port=1 password=my secret"],
    ids=["bad conninfo", "libpq echoes the password"],
)
def test_badPostgresConninfoNeverShowsThePassword(tmp_path, connect):
    pytest.importorskip("psycopg")
    config = writeConfig(str(tmp_path / "bad.conf"), "pgsql", connect)
    with pytest.raises(PassdbConfigError) as e:
        passdbFromString(f"sql:{config}")
    assert "is not usable" in str(e.value) and "password=***" in str(e.value)
    assert "secret" not in str(e.value)


async def _until(condition, what: str, seconds: float = 30) -> None:
    """Poll C{condition} in bounded real time (a database is starting or stopping)."""
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")


async def _loginLoop(client, answers: Counter, running: list[bool]) -> None:
    """Log in as fast as the server answers, counting the answers, while running."""
    for _ in range(1_000_000):
        if not running:
            return
        (reply,) = await client.command(b"a LOGIN refnl pass")
        answers[reply.split(b" ", 1)[1]] += 1


@pytest_twisted.ensureDeferred
async def test_postgresOutageUnderLoadIsLoggedOnce(postgres, tmp_path, clock, logged):
    """
    PostgreSQL killed (pg_ctl stop -m immediate) and restarted on its port
    while four clients log in without pause: one line when it goes down (the
    first line of the error), one when it is back (with the count of failed
    lookups), a one-line info per login, no traceback, no multi-line text.
    """
    config = _postgresConfig(tmp_path, postgres)
    passdb = passdbFromString(f"sql:{config}", timeout=2)
    harness = await _harness(passdb, clock)
    clients = [await harness.connect() for _ in range(4)]
    answers: Counter[bytes] = Counter()
    running = [True]
    loops = [Deferred.fromCoroutine(_loginLoop(c, answers, running)) for c in clients]
    referred = b"NO [REFERRAL imap://refnl;AUTH=PLAIN@imap2.example.com/] " + REFER
    try:
        await _until(lambda: answers[referred] >= 20, "logins before the outage")
        await deferToThread(postgres.stop, "immediate")
        await _until(lambda: answers[UNAVAILABLE] >= 200, "failed logins")
        await deferToThread(postgres.start)
        before = answers[referred]
        await _until(lambda: answers[referred] >= before + 200, "logins after the outage")
    finally:
        running.clear()
        await gatherResults(loops)
        for client in clients:
            await client.close()
        await _stop(harness, passdb)
    assert set(answers) == {referred, UNAVAILABLE}
    texts = [formatEvent(e) for e in logged]
    assert not [t for t in texts if len(t.splitlines()) != 1]
    assert not [e for e in logged if "log_failure" in e or "Traceback" in formatEvent(e)]
    sql = [e for e in logged if formatEvent(e).startswith(f"SQL passdb {config}")]
    (down, back) = [(e["log_level"].name, formatEvent(e)) for e in sql]
    assert down[0] == "error"
    assert re.fullmatch(
        rf"SQL passdb {re.escape(config)} unavailable: [^\n]*(server closed|connection failed)[^\n]*",
        down[1],
    )
    assert back[0] == "info"
    assert re.fullmatch(
        rf"SQL passdb {re.escape(config)} back after \d+\.\d s; "
        f"{answers[UNAVAILABLE]:,} lookups failed meanwhile",
        back[1],
    )
    logins = [e for e in logged if formatEvent(e).startswith("login ")]
    assert len(logins) == answers.total()
    assert Counter(e["log_level"].name for e in logged) == {"info": len(logged) - 1, "error": 1}


@pytest_twisted.ensureDeferred
async def test_postgresRestartBetweenLoginsIsInvisible(postgres, tmp_path, clock, logged):
    """The pooled connection died with the server: dropped quietly, the query retried."""
    passdb = passdbFromString(f"sql:{_postgresConfig(tmp_path, postgres)}", timeout=2)
    passdb.startService()
    harness = ServerHarness.forChecker(PassdbChecker([passdb]), clock=clock)
    referred = b"NO [REFERRAL imap://refnl;AUTH=PLAIN@imap2.example.com/] " + REFER
    try:
        async with harness.serving() as client:
            assert await client.command(b"a LOGIN refnl pass") == [b"a " + referred]
            await deferToThread(postgres.stop, "immediate")
            await deferToThread(postgres.start)
            assert await client.command(b"b LOGIN refnl pass") == [b"b " + referred]
    finally:
        passdb.stopService()
    assert [formatEvent(e) for e in logged if e["log_level"].name != "info"] == []


# SIGHUP: the config file read again (SQLPassdb.reload)

REFERRED = b"NO [REFERRAL imap://refnl;AUTH=PLAIN@imap2.example.com/] " + REFER


def _hostQuery(host: str) -> str:
    return f"SELECT password, '{host}' AS host, 'Y' AS nologin FROM users WHERE userid = '%u'"


@pytest_twisted.ensureDeferred
async def test_reloadUsesAChangedQueryOnTheSamePool(sqliteDir, clock):
    config = writeConfig(str(sqliteDir / "sql.conf"), "sqlite", "users.sqlite")
    passdb = passdbFromString(f"sql:{config}", timeout=2)
    harness = await _harness(passdb, clock)
    pool = passdb._pool
    try:
        client = await harness.connect()
        assert await client.command(b"a LOGIN refnl pass") == [b"a " + REFERRED]
        writeConfig(config, "sqlite", "users.sqlite", _hostQuery("imap3.example.com"))
        await passdb.reload()
        assert await client.command(b"b LOGIN refnl pass") == [
            b"b " + REFERRED.replace(b"imap2", b"imap3")
        ]
        assert passdb._pool is pool
        await client.close()
    finally:
        await _stop(harness, passdb)


@pytest_twisted.ensureDeferred
async def test_reloadWithANewConnectOpensANewPoolAndClosesTheOld(sqliteDir, clock):
    makeSQLite(str(sqliteDir / "other.sqlite"), [("refnl", "{PLAIN}other", "imap9", *[None] * 7)])
    config = writeConfig(str(sqliteDir / "sql.conf"), "sqlite", "users.sqlite")
    passdb = passdbFromString(f"sql:{config}", timeout=2)
    harness = await _harness(passdb, clock)
    old = passdb._pool
    try:
        client = await harness.connect()
        assert await client.command(b"a LOGIN refnl pass") == [b"a " + REFERRED]
        writeConfig(config, "sqlite", "other.sqlite")
        await passdb.reload()
        assert passdb._pool is not old
        reply = await client.command(b"b LOGIN refnl other")  # other.sqlite's row
        assert reply[0].startswith(b"b OK [REFERRAL imap://refnl;AUTH=PLAIN@imap9/]")
        await _until(lambda: not old.running, "the old pool closed", 10)
        await client.close()
    finally:
        await _stop(harness, passdb)


@pytest_twisted.ensureDeferred
async def test_lookupInFlightFinishesOnTheOldPool(postgres, sqliteDir):
    slow = _hostQuery("slow.example.com").replace("FROM users", "FROM users, pg_sleep(0.5)")
    config = writeConfig(str(sqliteDir / "sql.conf"), "pgsql", postgres.conninfo, slow)
    passdb = passdbFromString(f"sql:{config}", timeout=5)
    passdb.startService()
    old = passdb._pool
    try:
        inFlight = passdb.lookup("refnl", LoginContext())
        writeConfig(config, "sqlite", "users.sqlite")
        await passdb.reload()
        assert old.running and not inFlight.called
        assert (await inFlight).host == "slow.example.com"
        await _until(lambda: not old.running, "the old pool closed", 10)
        assert (await passdb.lookup("refnl", LoginContext())).host == "imap2.example.com"
    finally:
        passdb.stopService()


@pytest.mark.parametrize(
    ("newConfig", "reason"),
    [
        ("driver = sqlite\nconnect = users.sqlite\n", "password_query"),
        ("driver = sqlite\nconnect = missing.sqlite\npassword_query = " + QUERY + "\n",
         "cannot open SQLite database"),
        ("driver = sqlite\nconnect = users.sqlite\npassword_query = SELECT nosuch FROM users "
         "WHERE userid = '%u'\n", "password_query is refused by the database"),
    ],
    ids=["no-query", "missing-database", "refused-query"],
)  # fmt: skip
@pytest_twisted.ensureDeferred
async def test_brokenSQLConfigOnReloadKeepsTheCurrentOneAndLogsOneLine(
    sqliteDir, logged, newConfig, reason
):
    config = writeConfig(str(sqliteDir / "sql.conf"), "sqlite", "users.sqlite")
    passdb = passdbFromString(f"sql:{config}", timeout=2)
    passdb.startService()
    try:
        with open(config, "w") as f:
            f.write(newConfig)
        await passdb.reload()
        lines = [formatEvent(e) for e in logged if e["log_level"].name == "error"]
        assert len(lines) == 1 and lines[0].startswith("keeping the current SQL config: " + config)
        assert reason in lines[0] and "\n" not in lines[0]
        assert not [e for e in logged if "log_failure" in e]
        assert (await passdb.lookup("refnl", LoginContext())).host == "imap2.example.com"
    finally:
        passdb.stopService()


@pytest_twisted.ensureDeferred
async def test_postgresQueryRefusedOnReloadIsOneLine(postgres, tmp_path, logged):
    """PostgreSQL's error goes on for lines (LINE 1: ... and a caret): only its first is shown."""
    config = _postgresConfig(tmp_path, postgres)
    passdb = passdbFromString(f"sql:{config}", timeout=5)
    passdb.startService()
    try:
        _postgresConfig(tmp_path, postgres, "SELECT password FROM nosuchtable WHERE u = '%u'")
        await passdb.reload()
    finally:
        passdb.stopService()
    (line,) = [formatEvent(e) for e in logged if e["log_level"].name == "error"]
    assert 'password_query is refused by the database: relation "nosuchtable"' in line
    assert "\n" not in line and line.endswith(
        "(query: SELECT password FROM nosuchtable WHERE u = '%u')"
    )


def test_postgresQueryErrorAtStartIsOneLine(postgres, tmp_path):
    config = _postgresConfig(tmp_path, postgres, "SELECT password FROM nosuchtable WHERE u = '%u'")
    with pytest.raises(PassdbConfigError) as refused:
        passdbFromString(f"sql:{config}")
    assert "\n" not in str(refused.value)
