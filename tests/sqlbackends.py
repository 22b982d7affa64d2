"""
Real databases for the SQL passdb tests: a SQLite file, and a throwaway
PostgreSQL cluster (initdb + pg_ctl on a loopback port in a temp dir).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterable

from imapreferral.login.fields import PassdbReply

COLUMNS = ("userid", "password", "host", "port", "destuser", "reason",
           "nologin", "nopassword", "nodelay", "proxy")  # fmt: skip

QUERY = (
    "SELECT password, host, port, destuser, reason, nologin, nopassword, nodelay, proxy "
    "FROM users WHERE userid = '%u'"
)


def rowsFor(users: dict[str, PassdbReply]) -> list[tuple]:
    """Table rows for passdb replies: NULL for absent fields, 'Y' for flags."""

    def flag(value: bool) -> str | None:
        return "Y" if value else None

    return [
        (
            user,
            r.password,
            r.host,
            r.port,
            r.destuser,
            r.reason,
            flag(r.nologin),
            flag(r.nopassword),
            flag(r.nodelay),
            flag(r.proxy),
        )
        for user, r in users.items()
    ]


CREATE = (
    "CREATE TABLE users (userid TEXT PRIMARY KEY, password TEXT, host TEXT, port INTEGER, "
    "destuser TEXT, reason TEXT, nologin TEXT, nopassword TEXT, nodelay TEXT, proxy TEXT)"
)


def makeSQLite(path: str, rows: Iterable[tuple]) -> None:
    with sqlite3.connect(path) as db:
        db.execute(CREATE)
        db.executemany(f"INSERT INTO users VALUES ({', '.join('?' * len(COLUMNS))})", rows)


def writeConfig(path: str, driver: str, connect: str, query: str = QUERY, extra: str = "") -> str:
    with open(path, "w") as f:
        f.write(f"driver = {driver}\nconnect = {connect}\n{extra}password_query = {query}\n")
    return path


def _freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def findPostgres() -> str | None:
    """The directory with initdb and pg_ctl, or None."""
    initdb = shutil.which("initdb")
    if initdb:
        return os.path.dirname(os.path.realpath(initdb))
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


class PostgresServer:
    """
    A throwaway cluster. As root, the server runs as the C{postgres} user
    (initdb refuses root). Every step has a timeout.
    """

    def __init__(self, bindir: str) -> None:
        self.bindir = bindir
        self.dir = tempfile.mkdtemp(prefix="imapreferral-pg-")
        self.data = os.path.join(self.dir, "data")
        self.port = _freePort()
        self.asUser: list[str] = []
        if os.geteuid() == 0:
            self.asUser = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.dir, "postgres")
        self._run("initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "--no-sync")

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        subprocess.run(
            [*self.asUser, os.path.join(self.bindir, tool), *args],
            check=True, timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            cwd=self.dir,
        )  # fmt: skip

    @property
    def conninfo(self) -> str:
        return f"host=127.0.0.1 port={self.port} dbname=mail user=postgres connect_timeout=2"

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.dir} -F"
        self._run("pg_ctl", "-D", self.data, "-o", options, "-w", "-t", "30", "-l",
                  os.path.join(self.dir, "log"), "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "30", "stop")

    def createDatabase(self, rows: Iterable[tuple]) -> None:
        import psycopg

        admin = f"host=127.0.0.1 port={self.port} dbname=postgres user=postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE mail")
        with psycopg.connect(self.conninfo) as conn:
            conn.execute(CREATE)
            with conn.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO users VALUES ({', '.join(['%s'] * len(COLUMNS))})", list(rows)
                )

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except (subprocess.SubprocessError, OSError):
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


def waitForPort(port: int, up: bool, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            if up:
                return
        except OSError:
            if not up:
                return
        time.sleep(0.05)
    raise AssertionError(f"port {port} did not go {'up' if up else 'down'}")
