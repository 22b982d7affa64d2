"""
How fast can one address guess passwords, and does the answer's timing say
whether a user exists?

Starts ``twistd imapreferral`` trusting only 127.0.0.1/32, on a passwd-file
holding ``plain:{PLAIN}secret`` and ``blf:{BLF-CRYPT}...`` (bcrypt cost 10 by
default), then measures:

1. Guesses: N connections (default 20) from 127.0.0.2, an untrusted address,
   each connecting, sending ``a LOGIN plain guessK``, hanging up 50 ms later
   and connecting again, for S seconds (default 10). The server logs one line
   per password it checked; the figure is how many came from 127.0.0.2.
2. Timing: from 127.0.0.1 (trusted: no penalty), the LOGIN round trip of a
   wrong password for the ``{BLF-CRYPT}`` user and of an unknown user, with
   the default failure delay (2 s) and with ``--auth-failure-delay 0``.

``--source DIR`` runs another imapreferral tree with this virtualenv's
packages, e.g. the code before the hardening:

    git -C /work/main archive HEAD | tar -x -C /tmp/imapreferral-before
    .venv/bin/python benchmarks/bruteforce.py --source /tmp/imapreferral-before
    .venv/bin/python benchmarks/bruteforce.py

Prints the command lines and the figures. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bcrypt

HOST = "127.0.0.1"
ATTACKER = "127.0.0.2"
#: One log line per authentication, naming the client (not the
#: "refused connection remote=..." lines of the per-address connection limit).
CHECKED = re.compile(rb"\blogin remote=" + re.escape(ATTACKER.encode()) + rb"\b")


def freePort() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def writePasswd(directory: Path, cost: int) -> Path:
    blf = bcrypt.hashpw(b"secret", bcrypt.gensalt(cost)).decode()
    path = directory / "users.passwd"
    path.write_text(f"plain:{{PLAIN}}secret\nblf:{{BLF-CRYPT}}{blf}\n")
    return path


class Server:
    """A ``twistd imapreferral`` subprocess, logging to a file."""

    def __init__(self, source: Path | None, passwd: Path, log: Path, *options: str) -> None:
        self.port = freePort()
        self.command = [
            str(Path(sys.executable).with_name("twistd")), "-n", "--pidfile=", "imapreferral",
            "--listen", f"tcp:{self.port}:interface={HOST}:backlog=512",
            "--trusted-networks", f"{HOST}/32", "--plaintext-auth", "always",
            "--passdb", f"passwd-file:{passwd}", *options,
        ]  # fmt: skip
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        if source is not None:
            env["PYTHONPATH"] = str(source)
        self.logPath = log
        self._log = open(log, "wb")
        self._process = subprocess.Popen(
            self.command, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=log.parent
        )

    def waitUntilListening(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    raise SystemExit(f"server did not start; see {self.logPath}") from None
                time.sleep(0.1)

    def stop(self) -> bytes:
        """Stop the server; return its log."""
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=5)
        self._log.close()
        return self.logPath.read_bytes()


async def hangUpClient(port: int, deadline: float, hangUp: float, sent: list[int]) -> None:
    """Connect, LOGIN with a wrong password, hang up C{hangUp} s later; again until C{deadline}."""
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection(HOST, port, local_addr=(ATTACKER, 0))
        except OSError:
            await asyncio.sleep(0.01)
            continue
        try:
            greeting = await asyncio.wait_for(reader.readline(), 5)
            if greeting.startswith(b"* OK"):
                writer.write(b"a LOGIN plain guess%d\r\n" % len(sent))
                sent.append(1)
                await asyncio.sleep(hangUp)
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()


async def guesses(port: int, connections: int, seconds: float, hangUp: float) -> int:
    sent: list[int] = []
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(hangUpClient(port, deadline, hangUp, sent) for _ in range(connections)))
    return len(sent)


async def roundTrip(port: int, user: str, password: str) -> float:
    """One LOGIN's round trip in seconds, from the trusted address."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        await reader.readline()
        started = time.perf_counter()
        writer.write(f"a LOGIN {user} {password}\r\n".encode())
        line = await reader.readline()
        elapsed = time.perf_counter() - started
        if not line.startswith(b"a NO [AUTHENTICATIONFAILED]"):
            raise RuntimeError(f"unexpected reply for {user}: {line!r}")
        return elapsed
    finally:
        writer.close()


async def timings(port: int, samples: int) -> tuple[list[float], list[float]]:
    """Wrong password for the bcrypt user vs unknown user, interleaved."""
    await roundTrip(port, "blf", "warm-up")  # the server learns the scheme
    wrong: list[float] = []
    unknown: list[float] = []
    for n in range(samples):
        wrong.append(await roundTrip(port, "blf", f"wrong{n}"))
        unknown.append(await roundTrip(port, f"nobody{n}", f"wrong{n}"))
    return wrong, unknown


def describe(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"median {statistics.median(ms):8.1f} ms (min {min(ms):.1f}, max {max(ms):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, help="imapreferral tree to run (default: this one)")
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--hang-up", type=float, default=0.05, help="seconds after LOGIN")
    parser.add_argument("--bcrypt-cost", type=int, default=10)
    parser.add_argument("--samples", type=int, default=5, help="timed logins of each kind")
    args = parser.parse_args()
    print("benchmark:", shlex.join([sys.executable, *sys.argv]))
    source = args.source.resolve() if args.source else None
    print("source:", source or Path(__file__).resolve().parent.parent)
    with tempfile.TemporaryDirectory(prefix="imapreferral-bruteforce-") as tmp:
        directory = Path(tmp)
        passwd = writePasswd(directory, args.bcrypt_cost)

        server = Server(source, passwd, directory / "default.log")
        print("server:", shlex.join(server.command))
        try:
            server.waitUntilListening()
            slowWrong, slowUnknown = asyncio.run(timings(server.port, args.samples))
            sent = asyncio.run(guesses(server.port, args.connections, args.seconds, args.hang_up))
            time.sleep(1)  # let the server log what it checked
        finally:
            log = server.stop()
        checked = sum(1 for line in log.splitlines() if CHECKED.search(line))

        fast = Server(source, passwd, directory / "nodelay.log", "--auth-failure-delay", "0")
        print("server:", shlex.join(fast.command))
        try:
            fast.waitUntilListening()
            fastWrong, fastUnknown = asyncio.run(timings(fast.port, args.samples))
        finally:
            fast.stop()

    print(
        f"\n{args.connections} connections from {ATTACKER} (untrusted), each LOGIN then hang up "
        f"after {args.hang_up * 1000:.0f} ms, for {args.seconds:g} s:"
    )
    print(f"  LOGIN commands sent   {sent:6d}")
    print(f"  passwords checked     {checked:6d}")
    print(f"\nLOGIN round trip from {HOST} (trusted), bcrypt cost {args.bcrypt_cost}:")
    for delay, wrong, unknown in (
        ("2 (default)", slowWrong, slowUnknown),
        ("0", fastWrong, fastUnknown),
    ):
        print(f"  --auth-failure-delay {delay}")
        print(f"    wrong password, {{BLF-CRYPT}} user  {describe(wrong)}")
        print(f"    unknown user                      {describe(unknown)}")
        gap = statistics.median(wrong) - statistics.median(unknown)
        print(f"    difference of medians             {gap * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
