"""
Instructions per login session, counted by valgrind's callgrind: a figure
that does not move with the machine's load, for comparing two versions of
the login path when the machine is too busy for timings.

Starts ``twistd imapreferral`` (one process, logging on, as shipped) under
``valgrind --tool=callgrind``, runs --warmup sessions, zeroes the counters
(``callgrind_control -z``), runs --sessions sessions one after another
(connect, greeting, LOGIN, tagged reply, LOGOUT, close), dumps the counters
and prints instructions per session. Kinds of session:

  referral  passwd-file user with ``host nologin nodelay``: NO [REFERRAL]
  local     passwd-file user without fields: logged in here
  proxy     ``proxy host=127.0.0.1 port=BACKEND`` to a private Dovecot
            (``tests/dovecotbackend.py``; its instructions are not counted)

    .venv/bin/python benchmarks/login_instructions.py
    .venv/bin/python benchmarks/login_instructions.py --kind proxy --sessions 300
    .venv/bin/python benchmarks/login_instructions.py --tree /path/to/other/checkout

Prints its command line and the figures. Not a test. Needs valgrind and Linux.
Instruction counts are not seconds: use them for before/after comparisons
of our own code; use ``referral_login.py``/``proxy_login.py`` for timings.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

import referral_login  # noqa: E402

PASSWORD = "secret"


def session(port: int) -> bytes:
    """One whole session; the tagged LOGIN reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        reader = s.makefile("rb")
        reader.readline()
        s.sendall(b"a LOGIN alice " + PASSWORD.encode() + b"\r\n")
        while not (line := reader.readline()).startswith(b"a "):
            if not line:
                raise RuntimeError("connection closed before the LOGIN reply")
        s.sendall(b"b LOGOUT\r\n")
        while reader.readline():
            pass
        return line


def passwdLine(kind: str, backendPort: int | None) -> str:
    fields = {
        "referral": "host=imap2.example.com nologin nodelay",
        "local": "",
        "proxy": f"proxy host=127.0.0.1 port={backendPort}",
    }[kind]
    return f"alice:{{PLAIN}}{PASSWORD}::::::{fields}\n"


def counted(outFile: Path) -> int:
    """The Ir total of a callgrind dump."""
    text = outFile.read_text()
    match = re.search(r"^(?:summary|totals): (\d+)", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no totals in {outFile}")
    return int(match.group(1))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", choices=["referral", "local", "proxy"], default="referral")
    p.add_argument("--sessions", "-n", type=int, default=200)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--tree", type=Path, default=HERE.parent, help="checkout to measure")
    p.add_argument("--twistd-args", default="", help="extra imapreferral options")
    p.add_argument("--twistd-options", default="", help="twistd's own options, e.g. --logger")
    args = p.parse_args(argv)
    print("benchmark:", shlex.join([sys.executable, *sys.argv]))
    if shutil.which("valgrind") is None:
        print("valgrind is not installed")
        return 1
    backend = None
    if args.kind == "proxy":
        from dovecotbackend import DovecotBackend, dovecotExecutable

        backend = DovecotBackend(dovecotExecutable()).start()
    with tempfile.TemporaryDirectory(prefix="imapreferral-ir-") as tmp:
        directory = Path(tmp)
        passwd = directory / "users.passwd"
        passwd.write_text(passwdLine(args.kind, backend.port if backend else None))
        port = referral_login.free_port()
        outFile = directory / "callgrind.out"
        cmd = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={outFile}",
            "--dump-instr=no", "--collect-atstart=yes",
            sys.executable, str(Path(sys.executable).with_name("twistd")),
            "-n", "--pidfile=", *shlex.split(args.twistd_options), "imapreferral",
            "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--passdb", f"passwd-file:{passwd}", *shlex.split(args.twistd_args),
        ]  # fmt: skip
        print("server:", shlex.join(cmd))
        path = [str(args.tree.resolve()), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
        log = open(directory / "server.log", "wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp, env=env)
        try:
            referral_login.wait_for_port(port, 180, proc)
            for _ in range(args.warmup):
                reply = session(port)
            print("reply:", reply.decode(errors="replace").strip())
            subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True,
                           capture_output=True)  # fmt: skip
            started = time.monotonic()
            for _ in range(args.sessions):
                session(port)
            elapsed = time.monotonic() - started
            subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True,
                           capture_output=True)  # fmt: skip
            dumps = sorted(directory.glob("callgrind.out.*"), key=os.path.getmtime)
            if not dumps:
                raise RuntimeError("callgrind wrote no dump")
            total = counted(dumps[-1])
        finally:
            proc.terminate()
            proc.wait(60)
            if backend is not None:
                backend.stop()
    print(f"kind {args.kind}: {args.sessions} sessions under callgrind in {elapsed:.1f} s")
    print(f"instructions per session: {total / args.sessions:,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
