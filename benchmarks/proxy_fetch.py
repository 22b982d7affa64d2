"""
One big FETCH through the whole server vs straight from Dovecot.

Starts on loopback (ports from the OS):
  * a backend Dovecot (``tests/dovecotbackend.py``); a --megabytes message
    (default 200 MiB of 76-character base64 lines, CRLF, as a big
    attachment is) is delivered into alice's maildir directly, with its
    size in the file name (``,S=``) as Dovecot's own delivery writes it;
  * ``twistd imapreferral`` (one process, logging on) with
    ``alice:{PLAIN}secret::::::proxy host=127.0.0.1 port=BACKEND``.

The client is one raw socket read with ``recv_into`` into a 4 MiB buffer
until the tagged ``OK`` (imaplib copies each literal; this does not). Its
own ceiling is measured first: a forked sender pushes the same number of
bytes at it from memory, so the client reading is known not to be the
limit. Then, --rounds times, alternating: log in, ``SELECT INBOX``,
``FETCH 2 BODY[]`` timed from the command to its tagged ``OK``, (a)
straight from Dovecot and (b) through our front. One unmeasured FETCH of
each warms Dovecot's index and the page cache first.

Prints MB/s (MiB: 2^20 bytes) per round, the median of each, the ratio
(target: through the front >= 50% of direct), and the CPU seconds the
front and the backend spent per round (utime+stime from /proc).

    .venv/bin/python benchmarks/proxy_fetch.py
    .venv/bin/python benchmarks/proxy_fetch.py --megabytes 200 --rounds 5
    # where the front's time goes: py-spy (pip install py-spy) on the front
    # during the measured rounds, raw collapsed stacks to FILE
    .venv/bin/python benchmarks/proxy_fetch.py --py-spy /tmp/front.txt
    # a before/after in the same rounds: another checkout's front ("other")
    # alongside this one, each round direct, front and other in turn
    .venv/bin/python benchmarks/proxy_fetch.py --other-twistd ../main/.venv/bin/twistd

Not a test: nothing is asserted. Needs Dovecot (``dovecot-imapd``) and Linux.
"""

from __future__ import annotations

import argparse
import base64
import multiprocessing
import os
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

import referral_login  # noqa: E402
from dovecotbackend import DovecotBackend, dovecotExecutable  # noqa: E402
from proxy_login import ourFront  # noqa: E402

MiB = 1 << 20
CHUNK = 4 * MiB
TAIL = 64


def bigMessage(path: Path, megabytes: int) -> int:
    """Write the message (headers, then base64 lines) to C{path}; its size."""
    line = base64.b64encode(os.urandom(57)) + b"\r\n"  # 76 characters + CRLF
    block = line * (MiB // len(line))
    header = (
        b"From: bench@example.com\r\nTo: alice@example.com\r\nSubject: big\r\n"
        b"Content-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n"
    )
    with open(path, "wb") as out:
        out.write(header)
        for _ in range(megabytes * MiB // len(block)):
            out.write(block)
    return path.stat().st_size


def _backend(megabytes: int) -> tuple[DovecotBackend, int]:
    backend = DovecotBackend(dovecotExecutable())
    maildir = backend.directory / "home" / "alice" / "Maildir" / "new"
    staging = maildir / "staging"
    size = bigMessage(staging, megabytes)
    final = maildir / f"1000000001.M2P2.big,S={size}"
    staging.rename(final)
    if os.geteuid() == 0:
        shutil.chown(final, "dovecot", "dovecot")
    return backend.start(), size


class Reader:
    """A raw-socket IMAP reader: lines for the small talk, big reads for the FETCH."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CHUNK)
        self.buffer = bytearray(CHUNK)
        self.view = memoryview(self.buffer)
        self.pending = b""
        self.line()

    def line(self) -> bytes:
        while b"\r\n" not in self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise RuntimeError("connection closed")
            self.pending += data
        line, self.pending = self.pending.split(b"\r\n", 1)
        return line

    def command(self, tag: bytes, text: bytes) -> bytes:
        self.sock.sendall(tag + b" " + text + b"\r\n")
        while not (line := self.line()).startswith(tag + b" "):
            pass
        if not line.startswith(tag + b" OK"):
            raise RuntimeError(f"{text.split()[0]!r}: {line!r}")
        return line

    def readUntil(self, tag: bytes) -> int:
        """
        Bytes read until the line tagged C{tag} has ended (the body is
        base64 lines: no line of it starts with a tag and a space); that
        line must be an C{OK}.
        """
        total = len(self.pending)
        tail = self.pending[-TAIL:]
        self.pending = b""
        recv, view, buffer = self.sock.recv_into, self.view, self.buffer
        start = b"\r\n" + tag + b" "
        while True:
            if tail.endswith(b"\r\n") and (at := tail.rfind(start, 0, len(tail) - 2)) >= 0:
                if not tail[at + 2 :].startswith(tag + b" OK"):
                    raise RuntimeError(f"FETCH failed: {tail[at + 2 :]!r}")
                return total
            n = recv(view)
            if not n:
                raise RuntimeError("connection closed during the FETCH")
            total += n
            tail = (tail + buffer[max(0, n - TAIL) : n])[-TAIL:]

    def fetch(self, message: int) -> tuple[int, float]:
        """C{FETCH message BODY[]}: bytes read (response included) and seconds."""
        start = time.perf_counter()
        self.sock.sendall(b"f FETCH %d BODY[]\r\n" % message)
        total = self.readUntil(b"f")
        return total, time.perf_counter() - start

    def close(self) -> None:
        self.sock.sendall(b"z LOGOUT\r\n")
        self.sock.close()


def _push(listener: socket.socket, total: int) -> None:
    conn, _ = listener.accept()
    block = memoryview(b"x" * CHUNK)
    sent = 0
    while sent < total:
        n = min(CHUNK, total - sent)
        conn.sendall(block[:n])
        sent += n
    conn.sendall(b"\r\nf OK Fetch completed.\r\n")
    conn.close()


def clientCeiling(total: int) -> float:
    """MiB/s the reader takes from a sender that only sends from memory."""
    listener = socket.create_server(("127.0.0.1", 0))
    sender = multiprocessing.get_context("fork").Process(
        target=_push, args=(listener, total), daemon=True
    )
    sender.start()
    try:
        sock = socket.create_connection(listener.getsockname(), timeout=120)
        reader = Reader.__new__(Reader)
        reader.sock, reader.pending = sock, b""
        reader.buffer = bytearray(CHUNK)
        reader.view = memoryview(reader.buffer)
        start = time.perf_counter()
        got = reader.readUntil(b"f")
        seconds = time.perf_counter() - start
        sock.close()
    finally:
        sender.join(10)
        listener.close()
    return got / MiB / seconds


def cpuSeconds(pid: int) -> float:
    return referral_login.tree_cpu_ticks([pid]) / referral_login.CLK_TCK


def userSystem(pid: int) -> tuple[float, float]:
    """One process's user and system CPU seconds."""
    fields = referral_login._stat_fields(pid) or ["0"] * 15
    return int(fields[11]) / referral_login.CLK_TCK, int(fields[12]) / referral_login.CLK_TCK


def _pySpy(pid: int, out: str) -> subprocess.Popen:
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    cmd = [spy, "record", "--nonblocking", "-r", "500", "-f", "raw", "-o", out, "-p", str(pid)]
    print("profiler:", shlex.join(cmd))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached
    return proc


def runqueueWait(pid: int) -> float:
    """Seconds the process has waited, runnable, for a CPU (/proc/PID/schedstat)."""
    try:
        with open(f"/proc/{pid}/schedstat") as stat:
            return int(stat.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return float("nan")


def ownCPU() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def session(port: int) -> Reader:
    reader = Reader(port)
    reader.command(b"a", b"LOGIN alice secret")
    reader.command(b"s", b"SELECT INBOX")
    return reader


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--megabytes", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--py-spy", metavar="FILE", help="profile the front into FILE (raw stacks)")
    p.add_argument(
        "--other-twistd",
        metavar="TWISTD",
        help="also measure a front run by this twistd (another checkout), in the same rounds",
    )
    args = p.parse_args(argv)
    print("benchmark:", shlex.join([sys.executable, *sys.argv]))
    ceilings = ", ".join(f"{clientCeiling(args.megabytes * MiB):.0f}" for _ in range(3))
    print(f"client ceiling (raw reader, sender from memory), 3 runs: {ceilings} MB/s")
    backend, size = _backend(args.megabytes)
    ours = other = spy = None
    results: dict[str, list[float]] = {"direct": [], "front": []}
    cpu: dict[str, list[float]] = {"front": [], "other": []}
    with tempfile.TemporaryDirectory(prefix="imapreferral-fetchbench-") as tmp:
        try:
            ours, ourPort = ourFront(backend.port, Path(tmp))
            print(f"backend Dovecot 127.0.0.1:{backend.port}; message {size} bytes")
            ports = {"direct": backend.port, "front": ourPort}
            fronts = {"direct": ours, "front": ours}
            if args.other_twistd:
                other, ports["other"] = ourFront(backend.port, Path(tmp), Path(args.other_twistd))
                fronts["other"] = other
                results["other"] = []
            dovecotPid = backend._process.pid
            for name in ports:  # warm-up: Dovecot's index, the page cache
                reader = session(ports[name])
                reader.fetch(2)
                reader.close()
            if args.py_spy:
                spy = _pySpy(ours.pid, args.py_spy)
            for round in range(args.rounds):
                for name, port in ports.items():
                    pid = fronts[name].pid
                    reader = session(port)
                    before = cpuSeconds(pid), cpuSeconds(dovecotPid), ownCPU()
                    split, waited = userSystem(pid), runqueueWait(pid)
                    got, seconds = reader.fetch(2)
                    after = cpuSeconds(pid), cpuSeconds(dovecotPid), ownCPU()
                    user, system = (b - a for a, b in zip(split, userSystem(pid), strict=True))
                    waited = runqueueWait(pid) - waited
                    if name in cpu:
                        cpu[name].append(after[0] - before[0])
                    reader.close()
                    if got < size:
                        raise RuntimeError(f"{name}: {got} bytes read, the message has {size}")
                    rate = got / MiB / seconds
                    results[name].append(rate)
                    print(
                        f"round {round + 1} {name:<6} {got} bytes in {seconds:.3f} s: "
                        f"{rate:7.1f} MB/s; CPU s front {after[0] - before[0]:.2f} "
                        f"(user {user:.2f} sys {system:.2f}; waited for a CPU {waited:.2f}), "
                        f"Dovecot {after[1] - before[1]:.2f}, client {after[2] - before[2]:.2f}",
                        flush=True,
                    )
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
                print(f"py-spy stacks of the front: {args.py_spy}")
            for proc in (ours, other):
                if proc is not None:
                    proc.terminate()
                    proc.wait(20)
            backend.stop()
    direct, front = (statistics.median(results[k]) for k in ("direct", "front"))
    print(
        f"\nmedian of {args.rounds}: direct {direct:.1f} MB/s, through the front "
        f"{front:.1f} MB/s = {front / direct:.0%} of direct (target >= 50%)"
    )
    if args.other_twistd:
        for name in ("front", "other"):
            ratios = [f / d for f, d in zip(results[name], results["direct"], strict=True)]
            print(
                f"{name:<5}: median {statistics.median(results[name]):.1f} MB/s, "
                f"median of the rounds' ratios to direct {statistics.median(ratios):.0%}, "
                f"front CPU s per FETCH median {statistics.median(cpu[name]):.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
