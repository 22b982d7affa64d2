"""
Proxied login sessions per second: our front vs Dovecot's own proxy, side
by side, to the same backend Dovecot.

Starts three things on loopback (ports from the OS):
  * a backend Dovecot (``tests/dovecotbackend.py``; user alice, password
    secret; ``mail_max_userip_connections`` raised so the load fits);
  * Dovecot as a proxy: a second private Dovecot whose passdb says
    ``alice:{PLAIN}secret::::::proxy=y host=127.0.0.1 port=BACKEND``;
  * ``twistd imapreferral`` (one process, logging on) with the same line
    in our syntax (``proxy host=127.0.0.1 port=BACKEND``).

Then, for each --connections value, runs ``referral_login.py``'s load
(connect, LOGIN, tagged OK, LOGOUT, over and over) against our front and
then against Dovecot's: sessions/s, LOGIN p50/p99 and the front's CPU µs
per session (utime+stime of its process tree, from /proc; the backend's
CPU is not counted for either).

    .venv/bin/python benchmarks/proxy_login.py
    .venv/bin/python benchmarks/proxy_login.py --connections 1 16 64 --duration 10

Prints its command line and the figures. Not a test: nothing is asserted.
Needs Dovecot (``dovecot-imapd``) and Linux.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

import referral_login  # noqa: E402
from dovecotbackend import DovecotBackend, dovecotExecutable  # noqa: E402

EXPECT = r"a OK \[CAPABILITY IMAP4rev1 "


def _backend() -> DovecotBackend:
    backend = DovecotBackend(dovecotExecutable())
    with open(backend.configPath, "a") as config:
        config.write("protocol imap {\n  mail_max_userip_connections = 100000\n}\n")
    return backend.start()


def _dovecotProxy(backendPort: int) -> DovecotBackend:
    front = DovecotBackend(dovecotExecutable())
    (front.directory / "users").write_text(
        f"alice:{{PLAIN}}secret::::::proxy=y host=127.0.0.1 port={backendPort}\n"
    )
    return front.start()


def _ourFront(backendPort: int, directory: Path) -> tuple[subprocess.Popen, int]:
    passwd = directory / "users.passwd"
    passwd.write_text(f"alice:{{PLAIN}}secret::::::proxy host=127.0.0.1 port={backendPort}\n")
    port = referral_login.free_port()
    cmd = [
        str(Path(sys.executable).with_name("twistd")), "-n", "--pidfile=", "imapreferral",
        "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=512",
        "--passdb", f"passwd-file:{passwd}", "--auth-failure-delay", "0",
    ]  # fmt: skip
    print("our front:", shlex.join(cmd))
    log = open(directory / "front.log", "wb")  # lives as long as the process
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=directory
    )
    referral_login.wait_for_port(port, 30, proc)
    return proc, port


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", "-c", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--duration", "-d", type=float, default=5.0)
    p.add_argument("--warmup", "-W", type=float, default=1.0)
    p.add_argument("--workers", type=int, default=2, help="client processes")
    args = p.parse_args(argv)
    print("benchmark:", shlex.join([sys.executable, *sys.argv]))
    backend = _backend()
    dovecot = ours = None
    with tempfile.TemporaryDirectory(prefix="imapreferral-proxybench-") as tmp:
        try:
            dovecot = _dovecotProxy(backend.port)
            ours, ourPort = _ourFront(backend.port, Path(tmp))
            print(f"backend Dovecot 127.0.0.1:{backend.port}")
            print(f"Dovecot proxy 127.0.0.1:{dovecot.port} (config {dovecot.configPath})")
            fronts = [
                ("imapreferral", ourPort, ours.pid),
                ("dovecot-proxy", dovecot.port, dovecot._process.pid),
            ]
            for n in args.connections:
                for name, port, pid in fronts:
                    print(f"\n=== {name}, {n} connections ===", flush=True)
                    referral_login.main(
                        ["--no-spawn", "--port", str(port), "--server-pid", str(pid),
                         "--user", "alice", "--password", "secret", "--expect", EXPECT,
                         "--connections", str(n), "--duration", str(args.duration),
                         "--warmup", str(args.warmup), "--workers", str(args.workers)]
                    )  # fmt: skip
        finally:
            if ours is not None:
                ours.terminate()
                ours.wait(20)
            if dovecot is not None:
                dovecot.stop()
            backend.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
