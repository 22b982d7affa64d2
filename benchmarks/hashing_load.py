"""
Does slow password hashing hurt everybody else?

Starts ``twistd imapreferral`` with a passwd-file holding a cheap referral
user (``{PLAIN}``) and slow users (``{ARGON2ID}``, ``{BLF-CRYPT}``), then
measures the cheap user's LOGIN round trip (p50/p99) at a fixed pace, first
alone and then while N connections keep running argon2/bcrypt logins.
argon2 and bcrypt run on the server's bounded hashing thread pool, so the
reactor keeps answering the cheap logins.

    .venv/bin/python benchmarks/hashing_load.py --slow 8 --duration 10

Prints the command line and the figures. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import argon2
import bcrypt

HOST = "127.0.0.1"


def freePort() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def writePasswd(directory: Path) -> Path:
    argonHash = argon2.PasswordHasher().hash("pass")  # argon2-cffi's defaults
    bcryptHash = bcrypt.hashpw(b"pass", bcrypt.gensalt(10)).decode()
    path = directory / "users.passwd"
    path.write_text(
        "cheap:{PLAIN}pass::::::host=imap2.example.com nologin\n"
        f"argon:{{ARGON2ID}}{argonHash}::::::host=imap2.example.com nologin\n"
        f"blf:{{BLF-CRYPT}}{bcryptHash}::::::host=imap2.example.com nologin\n"
    )
    return path


async def session(user: str, port: int) -> float:
    """One connect/LOGIN/LOGOUT; returns the LOGIN round trip in seconds."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        await reader.readline()
        started = time.perf_counter()
        writer.write(f"a LOGIN {user} pass\r\n".encode())
        line = await reader.readline()
        elapsed = time.perf_counter() - started
        if not line.startswith(b"a NO [REFERRAL "):
            raise RuntimeError(f"unexpected reply for {user}: {line!r}")
        writer.write(b"b LOGOUT\r\n")
        while not (await reader.readline()).startswith((b"b ", b"")):
            pass
        return elapsed
    finally:
        writer.close()


async def cheapLoad(port: int, duration: float, pace: float, conns: int) -> list[float]:
    """C{conns} paced loops of cheap sessions (one every C{pace} s each)."""
    latencies: list[float] = []
    deadline = time.monotonic() + duration

    async def loop() -> None:
        while time.monotonic() < deadline:
            latencies.append(await session("cheap", port))
            await asyncio.sleep(pace)

    await asyncio.gather(*(loop() for _ in range(conns)))
    return latencies


async def slowLoad(port: int, conns: int, stop: asyncio.Event) -> list[float]:
    latencies: list[float] = []

    async def loop(user: str) -> None:
        while not stop.is_set():
            latencies.append(await session(user, port))

    await asyncio.gather(*(loop("argon" if i % 2 == 0 else "blf") for i in range(conns)))
    return latencies


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] * 1000


async def measure(port: int, args: argparse.Namespace) -> None:
    alone = await cheapLoad(port, args.duration, args.pace, args.cheap)
    stop = asyncio.Event()
    slow = asyncio.ensure_future(slowLoad(port, args.slow, stop))
    await asyncio.sleep(1)  # let the slow logins fill the pool
    loaded = await cheapLoad(port, args.duration, args.pace, args.cheap)
    stop.set()
    slowLatencies = await slow
    print(f"{'case':38} {'logins':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, values in (
        ("cheap {PLAIN} referral, alone", alone),
        (f"cheap referral, {args.slow} argon2/bcrypt busy", loaded),
        ("the argon2/bcrypt logins themselves", slowLatencies),
    ):
        print(
            f"{name:38} {len(values):7d} {percentile(values, 50):8.2f} "
            f"{percentile(values, 99):8.2f} {max(values) * 1000:8.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slow", type=int, default=8, help="connections doing slow logins")
    parser.add_argument("--cheap", type=int, default=4, help="connections doing cheap logins")
    parser.add_argument("--pace", type=float, default=0.01, help="seconds between cheap logins")
    parser.add_argument("--duration", type=float, default=10, help="seconds per phase")
    args = parser.parse_args()
    print("benchmark:", shlex.join([sys.executable, *sys.argv]))
    with tempfile.TemporaryDirectory(prefix="imapreferral-hash-") as tmp:
        passwd = writePasswd(Path(tmp))
        port = freePort()
        cmd = [
            str(Path(sys.executable).with_name("twistd")), "-n", "--pidfile=", "imapreferral",
            "--listen", f"tcp:{port}:interface={HOST}:backlog=512",
            "--passdb", f"passwd-file:{passwd}",
        ]  # fmt: skip
        print("server:", shlex.join(cmd))
        log = open(Path(tmp) / "server.log", "wb")
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    socket.create_connection((HOST, port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit("server did not start") from None
                    time.sleep(0.1)
            asyncio.run(measure(port, args))
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(server.pid, signal.SIGKILL)
                server.wait(timeout=5)
            log.close()


if __name__ == "__main__":
    main()
