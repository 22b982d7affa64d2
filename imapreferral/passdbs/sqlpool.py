"""
An C{adbapi.ConnectionPool} for which a dead database connection is news,
not a bug.

When the database dies, the next query on each pooled connection fails, and
Twisted's C{ConnectionPool._runInteraction} then rolls back on the dead
connection, which fails too and is logged as C{"Rollback failed"} with a
traceback, twice (once in C{adbapi.Connection.rollback}, once in
C{_runInteraction}); the query's own error reaches the caller. Here the
rollback's failure is expected: the dead connection is dropped (the thread's
next query connects anew) and the caller gets L{ConnectionLost}, so it can
retry once and hide a database restart. Nothing is logged: the SQL passdb
reports the outage itself, once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.enterprise import adbapi
from twisted.internet.error import ConnectionLost

from imapreferral.logtext import oneLine


class DatabaseConnectionLost(ConnectionLost):
    """A pooled connection died; its text is the first line of the driver's error."""

    def __str__(self) -> str:
        return f"database connection lost: {self.args[0]}"


def connectionIsGone(connection: Any) -> bool:
    """
    Whether a DB-API connection is known dead: psycopg says C{closed} or
    C{broken}; SQLite connections are files and do not die.
    """
    return bool(getattr(connection, "closed", False) or getattr(connection, "broken", False))


class QuietConnectionPool(adbapi.ConnectionPool):
    """
    A connection pool whose interactions hand a raw DB-API cursor to the
    interaction and treat a failed rollback as a lost connection: dropped,
    reported as L{ConnectionLost}, never logged.
    """

    def _runInteraction(self, interaction: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        connection = self.connect()  # this thread's, opened if needed
        cursor = connection.cursor()
        try:
            result = interaction(cursor, *args, **kw)
            cursor.close()
            connection.commit()
            return result
        except Exception as error:
            if self._rolledBack(connection):
                raise
            self.disconnect(connection)
            raise DatabaseConnectionLost(oneLine(str(error)) or type(error).__name__) from error

    @staticmethod
    def _rolledBack(connection: Any) -> bool:
        """Roll back; whether the connection is still usable afterwards."""
        try:
            connection.rollback()
        except Exception:
            return False
        return not connectionIsGone(connection)
