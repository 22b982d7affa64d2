"""
What a database outage does to the log.

Starts a throwaway PostgreSQL (tests/sqlbackends.py) and ``twistd --logfile
imapreferral`` with a SQL passdb on it, keeps N clients logging in without
pause (one connection each, ``a LOGIN refnl pass`` again and again), kills
PostgreSQL (``pg_ctl stop -m immediate``) for S seconds, starts it again on
the same port, lets the clients run a few seconds more, stops everything and
counts the server's log: lines, lines by level, continuation lines (a
multi-line event), tracebacks, the passdb's own lines, and the answers the
clients got.

    .venv/bin/python benchmarks/sql_outage.py --clients 8 --down 12

Needs initdb/pg_ctl and psycopg. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from sqlbackends import PostgresServer, findPostgres, rowsFor, writeConfig  # noqa: E402

from imapreferral.login.fields import PassdbReply  # noqa: E402

HOST = "127.0.0.1"
REFERRED = b"a NO [REFERRAL "
UNAVAILABLE = b"a NO [UNAVAILABLE] "


def freePort() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


async def client(port: int, answers: collections.Counter, stop: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        await reader.readline()
        while not stop.is_set():
            writer.write(b"a LOGIN refnl pass\r\n")
            line = await reader.readline()
            kind = "referred" if line.startswith(REFERRED) else (
                "unavailable" if line.startswith(UNAVAILABLE) else f"other: {line[:60]!r}"
            )  # fmt: skip
            answers[kind] += 1
            if not line:
                return
    finally:
        writer.close()


async def load(
    port: int, args: argparse.Namespace, postgres: PostgresServer
) -> collections.Counter:
    answers: collections.Counter = collections.Counter()
    stop = asyncio.Event()
    clients = [asyncio.ensure_future(client(port, answers, stop)) for _ in range(args.clients)]
    await asyncio.sleep(args.before)
    print(f"killing PostgreSQL for {args.down:g} s")
    await asyncio.to_thread(postgres.stop, "immediate")
    await asyncio.sleep(args.down)
    await asyncio.to_thread(postgres.start)
    await asyncio.sleep(args.after)
    stop.set()
    await asyncio.gather(*clients)
    return answers


def waitForListener(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the server exited")
        try:
            socket.create_connection((HOST, port), 1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the server did not start listening")


_EVENT = re.compile(r"^\d{4}-\d\d-\d\dT\S+ \[([^\]]*)\] ")


def summarise(log: str) -> None:
    lines = log.splitlines()
    events = [m for m in map(_EVENT.match, lines) if m]
    levels = collections.Counter(
        m.group(1).rsplit("#", 1)[1] if "#" in m.group(1) else "legacy" for m in events
    )
    print(f"log lines:            {len(lines):,}")
    print(f"events:               {len(events):,}  by level: {dict(levels)}")
    print(f"continuation lines:   {len(lines) - len(events):,}")
    print(f"tracebacks:           {log.count('Traceback (most recent call last)'):,}")
    print(f"'Rollback failed':    {log.count('Rollback failed'):,}")
    print(f"login lines:          {sum(' login ' in line[:80] for line in lines):,}")
    for line in lines:
        if "SQL passdb" in line[:120]:
            print("passdb line:         ", line[:200])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--down", type=float, default=12, help="seconds PostgreSQL is down")
    parser.add_argument("--before", type=float, default=3, help="seconds of load before")
    parser.add_argument("--after", type=float, default=3, help="seconds of load after")
    args = parser.parse_args()
    print("benchmark:", shlex.join([sys.executable, *sys.argv]))
    bindir = findPostgres()
    if bindir is None:
        raise SystemExit("PostgreSQL (initdb, pg_ctl) is not installed")
    postgres = PostgresServer(bindir)
    proc = None
    try:
        postgres.start()
        users = {
            "refnl": PassdbReply(password="{PLAIN}pass", host="imap2.example.com", nologin=True)
        }
        postgres.createDatabase(rowsFor(users))
        with tempfile.TemporaryDirectory(prefix="imapreferral-outage-") as tmp:
            config = writeConfig(os.path.join(tmp, "pg.conf"), "pgsql", postgres.conninfo)
            log = Path(tmp) / "server.log"
            port = freePort()
            cmd = [
                str(Path(sys.executable).with_name("twistd")), "-n", "--pidfile=",
                "--logfile", str(log), "imapreferral",
                "--listen", f"tcp:{port}:interface={HOST}:backlog=512",
                "--passdb", f"sql:{config}",
            ]  # fmt: skip
            print("server:", shlex.join(cmd))
            proc = subprocess.Popen(cmd, cwd=tmp)
            waitForListener(port, proc)
            answers = asyncio.run(load(port, args, postgres))
            proc.terminate()
            proc.wait(timeout=30)
            print("answers:", dict(answers))
            # twistd's log file rotates at 1 MB: server.log.N is the oldest.
            parts = sorted(log.parent.glob("server.log*"), key=lambda p: -int(p.suffix[1:] or 0)
                           if p.suffix[1:].isdigit() else 0)  # fmt: skip
            summarise("".join(p.read_text(encoding="utf-8", errors="replace") for p in parts))
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        postgres.destroy()


if __name__ == "__main__":
    main()
