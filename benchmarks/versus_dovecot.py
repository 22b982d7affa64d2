"""
Our server and Dovecot side by side in one run: what
``referral_login.py --versus-dovecot`` runs.

Starts our server as ``referral_login.py`` does (``--server-workers``,
``--server-args`` and ``--server-cmd`` honoured) and, when ``dovecot`` is
installed, a private Dovecot (``tests/dovecotbackend.py``: its own base_dir
and config in a temporary directory, a loopback port from the OS, run as the
current user unless that is root) whose passwd-file holds the same line:

    refnl:{PLAIN}pass::::::host=imap2.example.com nologin nodelay

with imap-login in high-performance mode, two long-lived login processes as
``--server-workers 2`` gives us two::

    service imap-login { service_count = 0  process_limit = 2  process_min_avail = 2 }

(``auth_failure_delay = 0``; Dovecot logs to a file, as our server does.)
Both answer ``a NO [REFERRAL imap://refnl;AUTH=PLAIN@imap2.example.com/]``;
the text after the code differs, and the default ``--expect`` accepts both.

For each ``--connections`` value, ``--rounds`` pairs of runs back to back:
ours first in odd rounds, Dovecot first in even ones. Both servers stay up
throughout, idle while the other is measured. A side's CPU is its whole
process tree from /proc (Dovecot: master, auth, imap-login, anvil, log,
config, stats). Prints each case, then a table: sessions/s of each side,
ours ÷ Dovecot, LOGIN p50/p99 and server CPU µs per session of each.
Without Dovecot, only our server runs and the table says so.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

import pytest  # noqa: E402
import referral_login  # noqa: E402
from dovecotbackend import DovecotBackend, dovecotExecutable  # noqa: E402

OURS, DOVECOT = "ours", "Dovecot"

#: Appended to the test backend's config: the setup issue 11 measures against.
DOVECOT_LOGIN = """\
service imap-login {
  service_count = 0
  process_limit = 2
  process_min_avail = 2
}
"""


def startDovecot(args: argparse.Namespace) -> DovecotBackend | None:
    """
    A started private Dovecot that refers the benchmark user as our server
    does, or None (and why, printed) when Dovecot is not installed.
    """
    try:
        executable = dovecotExecutable()
    except (pytest.skip.Exception, pytest.fail.Exception) as why:
        print(f"Dovecot side left out: {why}")
        return None
    version = subprocess.run(
        [executable, "--version"], capture_output=True, text=True, timeout=30
    ).stdout.strip()
    dovecot = DovecotBackend(executable)
    (dovecot.directory / "users").write_text(referral_login.passwdLine(args))
    with open(dovecot.configPath, "a") as config:
        config.write(DOVECOT_LOGIN)
    print(f"Dovecot {version}:", shlex.join([executable, "-F", "-c", str(dovecot.configPath)]))
    print("  with", " ".join(DOVECOT_LOGIN.split()), f"on 127.0.0.1:{dovecot.port}")
    try:
        return dovecot.start()
    except AssertionError as e:  # start() stopped it and says why
        raise RuntimeError(str(e)) from None


def measure(
    args: argparse.Namespace, connections: int, rnd: int, side: tuple[str, int, int, bool]
) -> dict:
    """
    One case against one side, printed.

    @param side: its name, port, the root of its process tree, and whether
        it is one single-threaded process.
    """
    name, port, pid, args.single_threaded_server = side
    result = referral_login.run_case(args, port, connections, [pid])
    print(f"=== {name}, {connections} connections, round {rnd}")
    referral_login.print_case(result)
    sys.stdout.flush()
    return result


def ratio(ours: dict, dovecot: dict | None) -> float | None:
    """Our sessions/s over Dovecot's."""
    if dovecot is None or not dovecot["sessions_per_s"]:
        return None
    return ours["sessions_per_s"] / dovecot["sessions_per_s"]


def printTable(rows: list[dict], args: argparse.Namespace) -> None:
    """The comparison: one row per --connections value and round."""
    fmt = referral_login.fmt

    def cell(r: dict | None, key: str) -> str:
        if r is None:
            return "-"
        if key == "lat":
            lat = r["login_rtt_ms"]
            return f"{lat['p50']:.2f} / {lat['p99']:.2f}"
        if key == "rate":
            return f"{r['sessions_per_s']:.0f}"
        if key == "cpu":
            return fmt(r["server_cpu_us_per_session"])
        if key == "other":
            return f"{r['other_cpu_pct_of_core']:.0f}"
        return str(r["errors"])

    ourLabel = f"ours ({args.server_workers} proc)" if not args.server_cmd else "ours"
    print()
    print(
        f"| conns | round | first | {ourLabel} sessions/s | Dovecot sessions/s | ours ÷ Dovecot "
        "| ours LOGIN p50 / p99 ms | Dovecot LOGIN p50 / p99 ms | ours µs/session "
        "| Dovecot µs/session | errors ours / Dovecot | other %core ours / Dovecot |"
    )
    print("|---" * 12 + "|")
    for row in rows:
        ours, dovecot = row[OURS], row.get(DOVECOT)
        print(
            f"| {row['connections']} | {row['round']} | {row['first']} "
            f"| {cell(ours, 'rate')} | {cell(dovecot, 'rate')} "
            f"| {fmt(ratio(ours, dovecot), '.2f', '-')} "
            f"| {cell(ours, 'lat')} | {cell(dovecot, 'lat')} "
            f"| {cell(ours, 'cpu')} | {cell(dovecot, 'cpu')} "
            f"| {cell(ours, 'errors')} / {cell(dovecot, 'errors')} "
            f"| {cell(ours, 'other')} / {cell(dovecot, 'other')} |"
        )
    for n in args.connections:
        ratios = [ratio(r[OURS], r.get(DOVECOT)) for r in rows if r["connections"] == n]
        ratios = sorted(x for x in ratios if x is not None)
        if len(ratios) > 1:
            print(
                f"{n} connections: ours ÷ Dovecot {ratios[0]:.2f} to {ratios[-1]:.2f} "
                f"over {len(ratios)} rounds"
            )


def main(args: argparse.Namespace) -> int:
    """
    Start both servers, run every case against each, stop both (on every
    exit path), print the table; the exit status is referral_login's.
    """
    tmp = tempfile.TemporaryDirectory(prefix="imapreferral-bench-")
    cleanups: list = []
    proc: subprocess.Popen | None = None
    dovecot: DovecotBackend | None = None
    logPath = Path(tmp.name) / "server.log"
    rows: list[dict] = []

    def onSignal(signum, frame):
        raise KeyboardInterrupt

    oldTerm = signal.signal(signal.SIGTERM, onSignal)
    try:
        proc, port, logPath = referral_login.spawnServer(args, Path(tmp.name), cleanups)
        ourSingle = args.single_threaded_server
        dovecot = startDovecot(args)
        print(
            f"client: {args.workers} worker processes, warm-up {args.warmup:g}s and "
            f"{args.duration:g}s measured per case, {args.rounds} round(s)"
        )
        for n in args.connections:
            for rnd in range(1, args.rounds + 1):
                sides = [(OURS, port, proc.pid, ourSingle)]
                if dovecot is not None:
                    dovecotSide = (DOVECOT, dovecot.port, dovecot.pid, False)
                    sides.insert(0 if rnd % 2 == 0 else 1, dovecotSide)
                row = {"connections": n, "round": rnd, "first": sides[0][0]}
                for side in sides:
                    if proc.poll() is not None:
                        raise RuntimeError(f"our server died (status {proc.returncode})")
                    row[side[0]] = measure(args, n, rnd, side)
                rows.append(row)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, oldTerm)
        if proc is not None:
            referral_login.stopAndReport(proc, logPath, args, bool(rows))
        if dovecot is not None:
            print(f"Dovecot log: {dovecot.log().count(chr(10))} lines")
            dovecot.stop()
            print("Dovecot stopped")
        for cleanup in cleanups:
            cleanup()
        tmp.cleanup()
        if args.json and rows:
            with open(args.json, "w") as f:
                json.dump({"argv": [sys.executable, *sys.argv], "results": rows}, f, indent=2)
    printTable(rows, args)
    results = [r for row in rows for r in (row[OURS], row.get(DOVECOT)) if r is not None]
    return 2 if any(r["errors"] or not r["referrals"] for r in results) else 0
