"""
What SIGHUP and SIGTERM cost a running twistd imapreferral.

Starts the server (TLS on, a passwd-file of --users lines) with
--connections clients connected and idle before login, then:

  1. SIGHUP, while one more client sends NOOPs back to back: how long
     until the log says "SIGHUP: reload done", and the slowest NOOP
     round trip meanwhile (how long the reactor stood still re-reading);
  2. SIGTERM: how long until every idle client has read
     "* BYE Server shutting down." and its end of file, and until the
     process has exited (and with what status).

Standard library only; Linux. Usage:

    .venv/bin/python benchmarks/reload_shutdown.py --users 100000 --connections 1000
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def makeCertificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "server.crt", directory / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-subj", "/CN=localhost", "-days", "1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def waitFor(condition, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.005)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--connections", type=int, default=1000)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    directory = Path(tempfile.mkdtemp(prefix="reload-bench-"))
    cert, key = makeCertificate(directory)
    passwd = directory / "users.passwd"
    with open(passwd, "w") as f:
        for n in range(args.users):
            f.write(f"user{n}:{{PLAIN}}pass{n}::::::host=imap{n % 7}.example.com nologin\n")
    port = freePort()
    log = directory / "twistd.log"
    env = dict(os.environ, PYTHONPATH=str(HERE))
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "imapreferral",
             "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=1024",
             "--passdb", f"passwd-file:{passwd}", "--tls-cert", str(cert), "--tls-key", str(key),
             "--max-connections", str(args.connections + 10),
             "--max-connections-per-ip", "0"],
            cwd=directory, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        waitFor(lambda: "imapreferral serving" in log.read_text(), "start-up")
        idle = []
        for _ in range(args.connections):
            sock = socket.create_connection(("127.0.0.1", port), timeout=60)
            idle.append((sock, sock.makefile("rb")))
        for _, f in idle:
            assert f.readline().startswith(b"* OK")

        pinger = socket.create_connection(("127.0.0.1", port), timeout=60)
        pf = pinger.makefile("rb")
        pf.readline()
        worst = [0.0]
        stop = threading.Event()

        def ping() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                started = time.monotonic()
                pinger.sendall(f"p{n} NOOP\r\n".encode())
                assert pf.readline().startswith(f"p{n} OK".encode())
                worst[0] = max(worst[0], time.monotonic() - started)

        thread = threading.Thread(target=ping)
        thread.start()
        time.sleep(0.5)
        before = worst[0]
        worst[0] = 0.0
        signalled = time.monotonic()
        proc.send_signal(signal.SIGHUP)
        waitFor(lambda: "SIGHUP: reload done" in log.read_text(), "the reload")
        reloaded = time.monotonic() - signalled
        time.sleep(0.2)
        stop.set()
        thread.join()
        pinger.close()
        print(f"{args.users:,} passwd-file users, TLS, {args.connections:,} idle connections")
        print(f"SIGHUP: reload done after {reloaded * 1000:.0f} ms; slowest NOOP during it "
              f"{worst[0] * 1000:.0f} ms (before: {before * 1000:.1f} ms)")  # fmt: skip

        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        for _, f in idle:
            assert f.readline() == b"* BYE Server shutting down.\r\n"
            assert f.readline() == b""
        allBye = time.monotonic() - signalled
        status = proc.wait(timeout=120)
        exited = time.monotonic() - signalled
        print(f"SIGTERM: all {args.connections:,} clients had BYE and EOF after "
              f"{allBye * 1000:.0f} ms; process exited after {exited * 1000:.0f} ms, status {status}")  # fmt: skip
        for sock, _ in idle:
            sock.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
