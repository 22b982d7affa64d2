"""
Many proxied IDLE sessions held past the pre-login time limits, and what
each costs the front in memory.

Starts ``twistd imapreferral`` (one process) with short pre-login limits
(``--preauth-idle-timeout 2 --preauth-lifetime 4``) proxying user alice
to a minimal IMAP backend served by this script (asyncio: a greeting,
LOGIN, IDLE, DONE, LOGOUT; a real Dovecot would need a process per
session). Then opens --sessions clients: each logs in through the front
and enters IDLE. It holds them --hold seconds (past both limits), then ends
each IDLE with DONE and counts the sessions that answer. Prints the
front's RSS growth per session (both sockets, relay, login state), read
from /proc.

    .venv/bin/python benchmarks/proxy_idle.py --sessions 2000 --hold 6

Prints its command line and the figures. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GREETING = b"* OK [CAPABILITY IMAP4rev1 IDLE LITERAL+] fake backend ready\r\n"


async def backendSession(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The backend's side of one session: just enough IMAP."""
    writer.write(GREETING)
    idling = b""
    while line := await reader.readline():
        tag, _, rest = line.rstrip(b"\r\n").partition(b" ")
        command = rest.split(b" ", 1)[0].upper()
        if tag.upper() == b"DONE" and idling:
            writer.write(idling + b" OK Idle completed.\r\n")
            idling = b""
        elif command == b"LOGIN":
            writer.write(tag + b" OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n")
        elif command == b"IDLE":
            idling = tag
            writer.write(b"+ idling\r\n")
        elif command == b"LOGOUT":
            writer.write(b"* BYE Logging out\r\n" + tag + b" OK Logout completed.\r\n")
            break
        else:
            writer.write(tag + b" OK done\r\n")
        await writer.drain()
    writer.close()


def rss(pid: int) -> int:
    """Resident set size of C{pid}, bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def client(port: int, opened: list) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reader.readline()
    writer.write(b"a LOGIN alice secret\r\n")
    reply = await reader.readline()
    if not reply.startswith(b"a OK"):
        raise RuntimeError(f"login: {reply!r}")
    writer.write(b"b IDLE\r\n")
    if await reader.readline() != b"+ idling\r\n":
        raise RuntimeError("no IDLE")
    opened.append((reader, writer))


async def done(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """End IDLE; whether the session still answers."""
    try:
        writer.write(b"DONE\r\n")
        alive = (await asyncio.wait_for(reader.readline(), 10)).startswith(b"b OK")
    except (OSError, asyncio.TimeoutError):
        alive = False
    writer.close()
    return alive


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def run(args: argparse.Namespace, directory: Path) -> None:
    server = await asyncio.start_server(backendSession, "127.0.0.1", 0, backlog=4096)
    backendPort = server.sockets[0].getsockname()[1]
    passwd = directory / "users.passwd"
    passwd.write_text(f"alice:{{PLAIN}}secret::::::proxy host=127.0.0.1 port={backendPort}\n")
    port = freePort()
    cmd = [
        str(Path(sys.executable).with_name("twistd")), "-n", "--pidfile=", "imapreferral",
        "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=4096",
        "--passdb", f"passwd-file:{passwd}", "--auth-failure-delay", "0",
        "--preauth-idle-timeout", "2", "--preauth-lifetime", "4",
        "--max-connections", str(args.sessions + 100), "--max-connections-per-ip", "0",
    ]  # fmt: skip
    print("front:", shlex.join(cmd))
    with open(directory / "front.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        warm: list = []
        for _ in range(20):  # warm up allocators and code paths
            await client(port, warm)
        before = rss(proc.pid)
        opened: list = []
        started = time.monotonic()
        for batch in range(0, args.sessions, 100):
            count = min(100, args.sessions - batch)
            await asyncio.gather(*(client(port, opened) for _ in range(count)))
        setup = time.monotonic() - started
        after = rss(proc.pid)
        print(f"{len(opened)} sessions logged in and idling in {setup:.1f}s")
        print(
            f"front RSS {before / 2**20:.1f} MB -> {after / 2**20:.1f} MB: "
            f"{(after - before) / len(opened) / 1024:.2f} KB per proxied IDLE session"
        )
        await asyncio.sleep(args.hold)
        alive = await asyncio.gather(*(done(r, w) for r, w in opened + warm))
        print(
            f"after {args.hold:g}s (pre-login limits 2s idle, 4s lifetime): "
            f"{sum(alive)}/{len(alive)} sessions answered DONE"
        )
    finally:
        proc.terminate()
        proc.wait(20)
        server.close()
        await asyncio.sleep(1)  # the backend's sessions see the front go


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=2000)
    p.add_argument("--hold", type=float, default=6.0, help="seconds to hold them idle")
    args = p.parse_args(argv)
    print("benchmark:", shlex.join([sys.executable, *sys.argv]))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the front inherits it
    with tempfile.TemporaryDirectory(prefix="imapreferral-idlebench-") as tmp:
        asyncio.run(run(args, Path(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
