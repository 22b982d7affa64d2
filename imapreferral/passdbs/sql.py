"""
The SQL passdb: Dovecot's C{password_query} against SQLite or PostgreSQL.

Queries run on a bounded pool of threads (C{twisted.enterprise.adbapi}),
never on the reactor. A database that is down, killed or slow gives a
temporary failure at once: one probe query is in flight at a time and the
others fail fast, and the passdb recovers by itself when a probe succeeds.
An outage is two log lines, whatever the load: the first line of the error
when it starts, and when it ends how long it lasted and how many lookups
failed meanwhile (Twisted's pool would add a "Rollback failed" traceback
per dead connection: L{QuietConnectionPool}).

On C{SIGHUP} (L{SQLPassdb.reload}) the config file is read again and its
query checked off the reactor, as at start-up; a file or query that does not
work keeps the current configuration, in one log line. A new C{connect}
(or driver) means a new pool; lookups in flight finish on the old one,
which is closed after them.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.enterprise import adbapi
from twisted.internet import defer
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from imapreferral.interfaces import IPassdb, IPassdbCacheKey
from imapreferral.login.context import LoginContext
from imapreferral.login.errors import TemporaryFailure
from imapreferral.login.fields import FieldError, PassdbReply
from imapreferral.logtext import oneLine
from imapreferral.passdbs.sqlconf import (
    CompiledQuery,
    SQLConfig,
    SQLConfigError,
    compileQuery,
    parseSQLConfig,
    redactConninfo,
    redactSecrets,
)
from imapreferral.passdbs.sqlpool import QuietConnectionPool
from imapreferral.passwords import allowsCramMD5
from imapreferral.reload import IReloadable

_log = Logger()

DEFAULT_TIMEOUT = 5.0
DEFAULT_POOL_SIZE = 4

_STARTUP_USER = "imapreferral-startup-check"


def _text(value: object) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, bool):
        return "y" if value else "n"
    return str(value)


def replyFromRow(names: list[str], row: tuple[Any, ...], defaultScheme: str) -> PassdbReply:
    """
    Build a reply from one result row, as Dovecot reads SQL columns:
    C{password} (with C{{SCHEME}}, else C{defaultScheme}),
    C{password_noscheme} (always C{defaultScheme}), C{user}, and every
    other column an extra field. SQL NULL means the field is absent.

    @raise FieldError: for a meaningless flag or port value.
    """
    fields: list[tuple[str, str | None]] = []
    password: str | None = None
    for name, value in zip(names, row, strict=True):
        key = name.lower()
        if value is None:
            continue
        text = _text(value)
        if key == "password":
            if text:
                password = (
                    text if text.startswith("{") and "}" in text else f"{{{defaultScheme}}}{text}"
                )
        elif key == "password_noscheme":
            if text:
                password = f"{{{defaultScheme}}}{text}"
        else:
            fields.append((key, text))
    return PassdbReply.fromFields(fields, password=password)


def dovecotConninfo(connect: str) -> tuple[str, int | None]:
    """
    Dovecot's pgsql C{connect} is a libpq conninfo plus its own C{maxconns=N}
    (connections per host), and may name several C{host=}s. Take
    C{maxconns} out (our pool size) and give libpq the hosts as one
    comma-separated list, which it tries in turn.
    """
    hosts: list[str] = []
    rest: list[str] = []
    maxconns: int | None = None
    for word in connect.split():
        key, _, value = word.partition("=")
        if key == "maxconns" and value.isdigit():
            maxconns = int(value)
        elif key == "host":
            hosts.append(value)
        else:
            rest.append(word)
    if hosts:
        rest.insert(0, "host=" + ",".join(hosts))
    return " ".join(rest), maxconns


class _Driver:
    """What differs between SQLite and PostgreSQL: connecting, paramstyle."""

    def __init__(self, config: SQLConfig, timeout: float) -> None:
        self.config = config
        self.timeout = timeout
        if config.driver == "sqlite":
            path = config.connect
            if not os.path.isabs(path):
                path = os.path.join(os.path.dirname(os.path.abspath(config.path)), path)
            self.database = path
            # Read-only, and never created: a typo in the path is an error.
            self.uri = Path(path).as_uri() + "?mode=ro"
            self.query = compileQuery(config.passwordQuery, "?")
            self.maxConnections: int | None = None
        else:
            try:
                import psycopg  # noqa: F401
            except ImportError:
                raise SQLConfigError(
                    f"{config.path}: driver pgsql needs psycopg: pip install 'imapreferral[pgsql]'"
                ) from None
            self.query = compileQuery(config.passwordQuery, "%s", "CAST({} AS text)")
            self.conninfo, self.maxConnections = dovecotConninfo(config.connect)

    def connect(self) -> Any:
        """A blocking DB-API connection (for the start-up check)."""
        if self.config.driver == "sqlite":
            return sqlite3.connect(self.uri, uri=True, timeout=self.timeout)
        import psycopg

        conn = psycopg.connect(self.conninfo, connect_timeout=max(1, int(self.timeout)))
        conn.execute(f"SET statement_timeout = {int(self.timeout * 1000)}")
        return conn

    def pool(self, size: int, reactor: Any) -> adbapi.ConnectionPool:
        common = dict(cp_min=1, cp_max=size, cp_noisy=False)
        if reactor is not None:
            common["cp_reactor"] = reactor
        if self.config.driver == "sqlite":
            return QuietConnectionPool(
                "sqlite3",
                self.uri,
                uri=True,
                timeout=self.timeout,
                check_same_thread=False,
                **common,
            )
        timeoutMs = int(self.timeout * 1000)

        def openfun(conn: Any) -> None:
            conn.execute(f"SET statement_timeout = {timeoutMs}")
            conn.commit()

        return QuietConnectionPool(
            "psycopg",
            self.conninfo,
            connect_timeout=max(1, int(self.timeout)),
            cp_openfun=openfun,
            **common,
        )


def readSQLConfig(path: str) -> SQLConfig:
    """
    Read and parse a Dovecot SQL config file.

    @raise SQLConfigError: naming the file (and line).
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise SQLConfigError(f"{path}: cannot read SQL config: {e}") from None
    return parseSQLConfig(path, text)


def checkQuery(driver: _Driver) -> str | None:
    """
    Run the query once, read-only, with a dummy user (blocking: at start-up,
    or in a thread on reload): Dovecot starts with a broken query and then
    fails every login; we refuse it.

    @return: L{None}, or a warning when a PostgreSQL server cannot be
        reached now (not the config's fault).
    @raise SQLConfigError: for a database that cannot be opened or a query
        it refuses, naming the file.
    """
    config = driver.config
    try:
        conn = driver.connect()
    except sqlite3.Error as e:
        raise SQLConfigError(
            f"{config.path}: cannot open SQLite database {driver.database}: {e}"
        ) from None
    except Exception as e:
        # libpq may echo a piece of the conninfo ('missing "=" after
        # "secret"'): passwords never reach a message.
        error = redactSecrets(str(e).strip(), config.connect)
        if type(e).__name__ == "ProgrammingError":  # psycopg: a bad conninfo
            raise SQLConfigError(
                f"{config.path}: connect = {redactConninfo(config.connect)!r} "
                f"is not usable: {error}"
            ) from None
        return f"{config.path}: cannot check password_query now, database unreachable: " + (
            oneLine(error)
        )
    try:
        cursor = conn.cursor()
        cursor.execute(driver.query.sql, driver.query.parameters(_STARTUP_USER, LoginContext()))
        cursor.fetchmany(1)
    except Exception as e:
        raise SQLConfigError(
            f"{config.path}:{config.queryLine}: password_query is refused by the "
            f"database: {oneLine(str(e))} (query: {config.passwordQuery})"
        ) from None
    finally:
        try:
            conn.rollback()
        finally:
            conn.close()
    return None


def _runQuery(
    cursor: Any, query: CompiledQuery, params: tuple[str, ...]
) -> tuple[list[str], list]:
    cursor.execute(query.sql, params)
    rows = cursor.fetchmany(2)
    names = [d[0] for d in cursor.description or ()]
    return names, rows


@implementer(IPassdb, IPassdbCacheKey, IReloadable)
class SQLPassdb(Service):
    """
    A passdb over Dovecot's SQL config. A C{Service}: start it to open the
    connection pool, stop it to close it (C{twistd} does both).

    @ivar config: The parsed config file.
    @ivar timeout: Seconds for connecting and for each query.
    """

    def __init__(
        self,
        config: SQLConfig,
        timeout: float = DEFAULT_TIMEOUT,
        poolSize: int = DEFAULT_POOL_SIZE,
        reactor: Any = None,
        clock: IReactorTime | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.config = config
        self.timeout = timeout
        self.poolSize = poolSize
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self._driver = _Driver(config, timeout)
        self._pool: adbapi.ConnectionPool | None = None
        #: Lookups not yet answered, per pool: a pool replaced on reload
        #: is closed once it has none.
        self._inFlight: dict[adbapi.ConnectionPool, int] = {}
        self._retiring: set[adbapi.ConnectionPool] = set()
        self._problem: str | None = None
        self._probing = False
        self._downSince = 0.0
        self._failedLookups = 0

    @classmethod
    def fromFile(cls, path: str, check: bool = True, **kwargs: Any) -> SQLPassdb:
        """
        Read a Dovecot SQL config and, with C{check}, run its query once.

        @raise SQLConfigError: naming the file, and for a query the
            database refuses, the query and the database's error.
        """
        config = readSQLConfig(path)
        if config.ignored:
            _log.info(
                "{path}: ignoring settings {keys}", path=path, keys=", ".join(config.ignored)
            )
        passdb = cls(config, **kwargs)
        if check:
            passdb.checkQuery()
        return passdb

    def __repr__(self) -> str:
        return f"<SQLPassdb {self.config.driver} {self.config.path}>"

    @property
    def available(self) -> bool:
        """Whether lookups reach the database: not between its unavailable and back lines."""
        return self._problem is None

    def checkQuery(self) -> None:
        """
        Run the query once (L{checkQuery}); a PostgreSQL server that cannot
        be reached now is only a warning.

        @raise SQLConfigError: for a query the database refuses.
        """
        warning = checkQuery(self._driver)
        if warning is not None:
            _log.warn("{warning}", warning=warning)

    def reload(self) -> Deferred[None]:
        """
        C{SIGHUP}: read the config file again and check its query in a
        thread, as at start-up; then use it (a new pool if C{driver} or
        C{connect} changed), or keep the current one and log one line why.
        """
        path = self.config.path
        try:
            config = readSQLConfig(path)
            driver = _Driver(config, self.timeout)
        except SQLConfigError as e:
            _log.error("keeping the current SQL config: {problem}", problem=str(e))
            return succeed(None)
        if config == self.config:
            _log.info("re-read SQL config {path}: unchanged", path=path)
            return succeed(None)
        d = deferToThread(checkQuery, driver)
        d.addCallbacks(self._use, self._refused, callbackArgs=(driver,))
        return d

    def _refused(self, failure: Failure) -> None:
        failure.trap(SQLConfigError)
        _log.error("keeping the current SQL config: {problem}", problem=str(failure.value))

    def _use(self, warning: str | None, driver: _Driver) -> None:
        if warning is not None:
            _log.warn("{warning}", warning=warning)
        old = self.config
        newPool = (old.driver, old.connect) != (driver.config.driver, driver.config.connect)
        self.config, self._driver = driver.config, driver
        if newPool and self._pool is not None:
            self._retire(self._pool)
            self._pool = None
            if self.running:
                self._ensurePool()
        _log.info(
            "re-read SQL config {path}: {what}",
            path=old.path,
            what="new database connections" if newPool else "same database, new settings",
        )

    def _retire(self, pool: adbapi.ConnectionPool) -> None:
        """Close C{pool} once its lookups are answered (L{_lookupDone})."""
        self._retiring.add(pool)
        if not self._inFlight.get(pool):
            self._closeRetired(pool)

    def _closeRetired(self, pool: adbapi.ConnectionPool) -> None:
        """
        Close a replaced pool without blocking the reactor: its threads are
        joined in a thread (a query abandoned after the timeout may still
        run there).
        """
        self._retiring.discard(pool)
        self._inFlight.pop(pool, None)
        if pool.shutdownID is not None:
            self._reactor.removeSystemEventTrigger(pool.shutdownID)
            pool.shutdownID = None
        if pool.running:
            deferToThread(pool.finalClose).addErrback(
                lambda f: _log.failure("closing the replaced SQL pool", f)
            )

    def startService(self) -> None:
        super().startService()
        self._ensurePool()

    def stopService(self) -> None:
        super().stopService()
        for pool in {*self._retiring, self._pool} - {None}:
            pool.close()  # type: ignore[union-attr]
        self._pool = None
        self._retiring.clear()
        self._inFlight.clear()

    def _ensurePool(self) -> adbapi.ConnectionPool:
        if self._pool is None:
            size = self._driver.maxConnections or self.poolSize
            self._pool = self._driver.pool(size, self._reactor)
        return self._pool

    def cacheKey(self, username: str, context: LoginContext) -> tuple[str, ...]:
        """The values of the query's variables, as Dovecot keys its auth cache."""
        return self._driver.query.parameters(username, context)

    def lookup(self, username: str, context: LoginContext) -> Deferred[PassdbReply | None]:
        if self._problem is not None and self._probing:
            self._failedLookups += 1
            return fail(TemporaryFailure("SQL passdb unavailable"))
        params = self._driver.query.parameters(username, context)
        try:
            for value in params:
                value.encode("utf-8")
        except UnicodeEncodeError:
            return succeed(None)  # a name that is not UTF-8 cannot be in the table
        self._probing = self._problem is not None
        pool, driver = self._ensurePool(), self._driver
        self._inFlight[pool] = self._inFlight.get(pool, 0) + 1
        d = self._run(pool, driver.query, params, retry=True)
        d.addTimeout(self.timeout, self._clock)
        config = driver.config
        d.addCallbacks(self._succeeded, self._failed, (config,), errbackArgs=(config,))
        d.addBoth(self._lookupDone, pool)
        return d

    def _lookupDone(self, result: object, pool: adbapi.ConnectionPool) -> object:
        count = self._inFlight.get(pool, 1) - 1
        self._inFlight[pool] = count
        if count <= 0 and pool in self._retiring:
            self._closeRetired(pool)
        return result

    def _run(
        self,
        pool: adbapi.ConnectionPool,
        query: CompiledQuery,
        params: tuple[str, ...],
        retry: bool,
    ) -> Deferred:
        d = pool.runInteraction(_runQuery, query, params)
        if retry:
            d.addErrback(self._retryLostConnection, pool, query, params)
        return d

    def _retryLostConnection(
        self,
        failure: Failure,
        pool: adbapi.ConnectionPool,
        query: CompiledQuery,
        params: tuple[str, ...],
    ) -> Deferred:
        """
        L{QuietConnectionPool} reports a connection that died since its last
        use, and drops it: one retry, on a new connection, hides a database
        restart from the client.
        """
        failure.trap(ConnectionLost)
        return self._run(pool, query, params, retry=False)

    def _succeeded(self, result: tuple[list[str], list], config: SQLConfig) -> PassdbReply | None:
        self._probing = False
        if self._problem is not None:
            self._problem = None
            _log.info(
                "SQL passdb {path} back after {seconds:.1f} s; {failed:,} lookups failed meanwhile",
                path=self.config.path,
                seconds=self._clock.seconds() - self._downSince,
                failed=self._failedLookups,
            )
        names, rows = result
        if not rows:
            return None
        columns = {name.lower() for name in names}
        if not columns & {"password", "password_noscheme", "nopassword"}:
            # Dovecot: "Password query must return a field named 'password'".
            raise TemporaryFailure("password_query returned no password column")
        if len(rows) > 1:
            raise TemporaryFailure("password_query returned more than one row")
        try:
            reply = replyFromRow(names, rows[0], config.defaultPassScheme)
        except FieldError as e:
            raise TemporaryFailure(f"password_query returned a bad field: {e}") from None
        return reply

    def _failed(self, failure: Failure, config: SQLConfig) -> Failure:
        self._probing = False
        if failure.check(TemporaryFailure, defer.CancelledError):
            return failure  # the client went away: says nothing about the database
        if failure.check(defer.TimeoutError, defer.CancelledError):
            problem = f"no answer within {self.timeout:g} s"
        else:
            problem = (
                oneLine(redactSecrets(str(failure.value), config.connect)) or failure.type.__name__
            )
        if self._problem is None:
            self._problem = problem
            self._downSince = self._clock.seconds()
            self._failedLookups = 0
            _log.error(
                "SQL passdb {path} unavailable: {problem}", path=self.config.path, problem=problem
            )
        self._failedLookups += 1
        return Failure(TemporaryFailure("SQL passdb unavailable"))

    def canProvidePlaintext(self) -> bool:
        """
        Whether CRAM-MD5 can work: only if the default scheme is plaintext
        (or CRAM-MD5), since rows are not known in advance.
        """
        return allowsCramMD5("", self.config.defaultPassScheme)
