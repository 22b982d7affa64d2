#!/usr/bin/env python3
"""
Login-referral throughput benchmark for imapreferral (stdlib only).

Starts ``twistd imapreferral`` (from the same virtualenv as the Python running
this script) on a free loopback port with a temporary passwd-file holding

    refnl:{PLAIN}pass::::::host=imap2.example.com nologin nodelay

waits until the port accepts, then, for each --connections value, keeps that
many client sessions going for --warmup + --duration seconds.  One session:

    connect, read the greeting, "a LOGIN refnl pass", read the tagged reply and
    check it is "a NO [REFERRAL imap://refnl;AUTH=PLAIN@imap2.example.com/] ...",
    "b LOGOUT", read until "b OK", close; repeat.

The load comes from --workers processes (default 2), each a single-threaded
selectors loop over raw non-blocking sockets, so that the client costs far less
CPU per session than the server.  Only what finishes inside the measured window
(after the warm-up) counts.  Printed per case: sessions/s, LOGIN round-trip
latency p50/p90/p99/max, referrals seen vs errors, and the CPU time of the
server (utime+stime from /proc/<pid>/stat, including reaped children) and of
the client workers over the window, per session and as % of one core, plus
the whole machine's busy share from /proc/stat and a verdict on which side
saturates.

Examples:

    .venv/bin/python benchmarks/referral_login.py                     # 16 and 64
    .venv/bin/python benchmarks/referral_login.py --connections 64 --duration 30
    # side by side with a private Dovecot (same passwd-file line, two
    # imap-login processes), each case against both, in alternating order
    .venv/bin/python benchmarks/referral_login.py --versus-dovecot --server-workers 2 --rounds 2
    # an already-running server (e.g. Dovecot), its CPU read from the process tree
    .venv/bin/python benchmarks/referral_login.py --no-spawn --port 10143 \\
        --user refnl --password pass --server-pid "$(pgrep -xo dovecot)"
    # a different server command; {port} and {passwd} are substituted
    .venv/bin/python benchmarks/referral_login.py --server-cmd \\
        'twistd -n --pidfile= imapreferral --listen tcp:{port}:interface=127.0.0.1 \\
         --passdb passwd-file:{passwd} --auth-failure-delay 0'

Linux only (/proc).  Everything is bounded in time; the spawned server is
stopped with SIGTERM (SIGKILL after --stop-timeout) on every exit path.
"""

from __future__ import annotations

import argparse
import errno
import json
import multiprocessing
import os
import re
import selectors
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path

HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# ---------------------------------------------------------------------------
# /proc helpers


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # "pid (comm) state ppid ..."; comm may contain spaces and parentheses.
    return raw[raw.rindex(")") + 2 :].split()


def proc_cpu_ticks(pid: int, children: bool = True) -> int | None:
    """utime+stime (+cutime+cstime: reaped children) of one process, in ticks."""
    f = _stat_fields(pid)
    if f is None:
        return None
    # After "(comm) ": f[0]=state(3) f[1]=ppid(4) ... f[11]=utime(14) f[12]=stime(15)
    # f[13]=cutime(16) f[14]=cstime(17)
    ticks = int(f[11]) + int(f[12])
    if children:
        ticks += int(f[13]) + int(f[14])
    return ticks


def process_tree(roots: list[int]) -> list[int]:
    """The roots and all their live descendants."""
    parent: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            f = _stat_fields(int(name))
            if f is not None:
                parent[int(name)] = int(f[1])
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    seen: list[int] = []
    todo = [r for r in roots if r in parent]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.append(pid)
        todo.extend(children.get(pid, ()))
    return seen


def tree_cpu_ticks(roots: list[int]) -> int:
    """
    CPU of a process tree: for every live member utime+stime+cutime+cstime.
    A child that exits between two samples moves from its own fields into its
    parent's cutime/cstime, so differences of this sum stay right.
    """
    return sum(proc_cpu_ticks(p) or 0 for p in process_tree(roots))


def machine_cpu() -> tuple[int, int, int]:
    """(busy, total, irq+softirq) ticks of all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        parts = f.readline().split()
    vals = [int(v) for v in parts[1:9]]  # user nice system idle iowait irq softirq steal
    total = sum(vals)
    return total - vals[3] - vals[4], total, vals[5] + vals[6]


# ---------------------------------------------------------------------------
# IMAP bits


_ATOM_SPECIALS = set(b'(){ %*"\\]')


def astring(value: str) -> bytes:
    raw = value.encode("utf-8")
    if raw and all(0x20 < c < 0x7F and c not in _ATOM_SPECIALS for c in raw):
        return raw
    return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


# ---------------------------------------------------------------------------
# Load-generating worker (runs in a child process)

S_GREETING, S_LOGIN, S_LOGOUT, S_IDLE = range(4)


class Conn:
    __slots__ = ("buf", "retry_at", "sock", "state", "t_login", "t_session")

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.state = S_IDLE
        self.buf = b""
        self.t_session = 0.0
        self.t_login = 0.0
        self.retry_at = 0.0


def worker_main(
    nconns: int,
    host: str,
    port: int,
    login_line: bytes,
    expect: str,
    t_start: float,
    t_measure: float,
    t_end: float,
    session_timeout: float,
    conn_out,
) -> None:
    # A worker must never outlive its run: an alarm kills it if the loop hangs.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(signal.SIGKILL)
    signal.alarm(max(1, int(t_end - time.monotonic() + session_timeout + 30)))
    expect_re = re.compile(expect.encode("utf-8"))
    logout_line = b"b LOGOUT\r\n"
    now_f = time.monotonic
    sel = selectors.DefaultSelector()
    conns = [Conn() for _ in range(nconns)]
    lat = array("d")
    greet = array("d")
    stats = {
        "sessions": 0,  # b OK received inside the window
        "referrals": 0,  # tagged LOGIN replies matching --expect inside the window
        "bad_login_reply": 0,
        "errors": 0,  # every failure inside the window (includes bad_login_reply)
        "error_kinds": {},
        "sessions_total": 0,
        "errors_total": 0,
        "first_bad_reply": None,
    }
    kinds: dict[str, int] = stats["error_kinds"]  # type: ignore[assignment]

    def fail(c: Conn, kind: str, now: float) -> None:
        stats["errors_total"] += 1
        if t_measure <= now < t_end:
            stats["errors"] += 1
            kinds[kind] = kinds.get(kind, 0) + 1
        drop(c)
        c.retry_at = now + 0.02  # no hot loop against a refusing port

    def drop(c: Conn) -> None:
        if c.sock is not None:
            try:
                sel.unregister(c.sock)
            except (KeyError, ValueError):
                pass
            c.sock.close()
            c.sock = None
        c.state = S_IDLE
        c.buf = b""

    def start(c: Conn, now: float) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rc = s.connect_ex((host, port))
        if rc not in (0, errno.EINPROGRESS):
            s.close()
            fail(c, "connect:" + errno.errorcode.get(rc, str(rc)), now)
            return
        c.sock = s
        c.state = S_GREETING
        c.buf = b""
        c.t_session = now
        # Readable = greeting arrived, or connect failed (recv raises).
        sel.register(s, selectors.EVENT_READ, c)

    def send(c: Conn, data: bytes, now: float) -> bool:
        try:
            n = c.sock.send(data)  # type: ignore[union-attr]
        except OSError as e:
            fail(c, "send:" + (errno.errorcode.get(e.errno or 0) or type(e).__name__), now)
            return False
        if n != len(data):  # a few bytes into an empty socket buffer: never expected
            fail(c, "short-send", now)
            return False
        return True

    def handle(c: Conn, line: bytes, now: float) -> bool:
        """One response line; False when the connection was closed/restarted."""
        st = c.state
        if st == S_LOGIN:
            if line[:2] != b"a ":
                return True  # untagged (e.g. "* CAPABILITY"): skip
            inwin = t_measure <= now < t_end
            if expect_re.match(line):
                if inwin:
                    stats["referrals"] += 1
                    lat.append(now - c.t_login)
            else:
                if stats["first_bad_reply"] is None:
                    stats["first_bad_reply"] = line.decode("utf-8", "replace").rstrip()
                if inwin:
                    stats["bad_login_reply"] += 1
                fail(c, "bad-login-reply", now)
                return False
            c.state = S_LOGOUT
            return send(c, logout_line, now)
        if st == S_GREETING:
            if line[:5] != b"* OK ":
                fail(c, "bad-greeting", now)
                return False
            if t_measure <= now < t_end:
                greet.append(now - c.t_session)
            c.state = S_LOGIN
            c.t_login = now
            return send(c, login_line, now)
        if st == S_LOGOUT:
            if line[:2] != b"b ":
                return True  # "* BYE ..."
            if line[:5] != b"b OK ":
                fail(c, "bad-logout-reply", now)
                return False
            stats["sessions_total"] += 1
            if t_measure <= now < t_end:
                stats["sessions"] += 1
            drop(c)
            start(c, now)
            return False
        return False

    # Wait for the common start time, then open every connection.
    while (d := t_start - now_f()) > 0:
        time.sleep(min(d, 0.05))
    now = now_f()
    for c in conns:
        start(c, now)

    next_check = now + 0.25
    while True:
        now = now_f()
        if now >= t_end:
            break
        if now >= next_check:
            next_check = now + 0.25
            for c in conns:
                if c.sock is None:
                    if now >= c.retry_at:
                        start(c, now)
                elif now - c.t_session > session_timeout:
                    fail(c, "timeout", now)
        for key, _ in sel.select(min(0.05, t_end - now, next_check - now)):
            c = key.data
            if c.sock is None:
                continue
            try:
                data = c.sock.recv(8192)
            except BlockingIOError:
                continue
            except OSError as e:
                fail(c, "recv:" + (errno.errorcode.get(e.errno or 0) or type(e).__name__), now_f())
                continue
            now = now_f()
            if not data:
                fail(c, "eof", now)
                continue
            buf = c.buf + data if c.buf else data
            start_i = 0
            while True:
                i = buf.find(b"\n", start_i)
                if i < 0:
                    c.buf = buf[start_i:]
                    break
                if not handle(c, buf[start_i : i + 1], now):
                    break  # connection restarted; the rest of buf is moot
                start_i = i + 1
    for c in conns:
        drop(c)
    sel.close()
    conn_out.send((stats, lat.tobytes(), greet.tobytes()))
    conn_out.close()


# ---------------------------------------------------------------------------
# Server process handling


def _die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Get C{sig} when the parent (this script) dies, even by SIGKILL (Linux)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(sig))  # PR_SET_PDEATHSIG
    except Exception:
        pass


class ThrowawayPostgres:
    """
    A PostgreSQL cluster for --passdb-kind pgsql: initdb and pg_ctl on a free
    loopback port in its own temporary directory (as the postgres user when
    run as root), the user in table C{users} of database C{mail}, created with
    psql. L{stop} removes it; every step has a timeout.
    """

    def __init__(self, user: str, password: str, host: str) -> None:
        import glob
        import shutil

        initdb = (
            shutil.which("initdb")
            or (sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or [None])[-1]
        )
        if initdb is None:
            raise RuntimeError("--passdb-kind pgsql needs PostgreSQL (initdb, pg_ctl, psql)")
        self.bindir = os.path.dirname(os.path.realpath(initdb))
        self.dir = tempfile.mkdtemp(prefix="imapreferral-bench-pg-")
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            self.as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.dir, "postgres")
        self.started = False
        self._run("initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "--no-sync")
        options = f"-h {HOST} -p {self.port} -k {self.dir} -F"
        self._run("pg_ctl", "-D", self.data, "-o", options, "-w", "-t", "30", "-l",
                  os.path.join(self.dir, "log"), "start")  # fmt: skip
        self.started = True
        quoted = lambda text: "'" + text.replace("'", "''") + "'"  # noqa: E731
        try:
            self._psql("postgres", "CREATE DATABASE mail")
            self._psql(
                "mail",
                "CREATE TABLE users (userid TEXT PRIMARY KEY, password TEXT, host TEXT); "
                f"INSERT INTO users VALUES ({quoted(user)}, {quoted('{PLAIN}' + password)}, "
                f"{quoted(host)})",
            )
        except BaseException:
            self.stop()
            raise

    @property
    def conninfo(self) -> str:
        return f"host={HOST} port={self.port} dbname=mail user=postgres"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self.as_user, os.path.join(self.bindir, tool), *args], check=True, timeout=60,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.dir,
        )  # fmt: skip

    def _psql(self, database: str, sql: str) -> None:
        subprocess.run(
            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", HOST, "-p", str(self.port),
             "-U", "postgres", "-d", database, "-c", sql],
            check=True, timeout=30, stdout=subprocess.DEVNULL,
        )  # fmt: skip

    def stop(self) -> None:
        import shutil

        try:
            if self.started:
                self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "-t", "30", "stop")
        except (subprocess.SubprocessError, OSError):
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


QUERY = "SELECT password, host, 'Y' AS nologin FROM users WHERE userid = '%u'"


def passdbFor(kind: str, directory: Path, args: argparse.Namespace, cleanups: list) -> str:
    """
    The --passdb argument for the server: the passwd-file, SQLite via
    Dovecot's SQL config, or PostgreSQL (a throwaway cluster, stopped by the
    C{cleanups} appended here).
    """
    if kind == "passwd-file":
        return f"passwd-file:{directory / 'users.passwd'}"
    conf = directory / "dovecot-sql.conf.ext"
    if kind == "pgsql":
        postgres = ThrowawayPostgres(args.user, args.password, args.referral_host)
        cleanups.append(postgres.stop)
        conf.write_text(
            f"driver = pgsql\nconnect = {postgres.conninfo}\npassword_query = {QUERY}\n"
        )
        return f"sql:{conf}"
    import sqlite3

    db = directory / "users.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE users (userid TEXT PRIMARY KEY, password TEXT, host TEXT)")
        conn.execute(
            "INSERT INTO users VALUES (?, ?, ?)",
            (args.user, "{PLAIN}" + args.password, args.referral_host),
        )
    conf.write_text(f"driver = sqlite\nconnect = {db}\npassword_query = {QUERY}\n")
    return f"sql:{conf}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited early with status {proc.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=1.0) as s:
                s.settimeout(2.0)
                if s.recv(512).startswith(b"* OK"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"nothing answered on {HOST}:{port} within {timeout:.0f}s")


def stop_server(proc: subprocess.Popen, timeout: float) -> str:
    if proc.poll() is not None:
        return f"had already exited ({proc.returncode})"
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
        return f"stopped by SIGTERM (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        return "killed with SIGKILL after SIGTERM timed out"


# ---------------------------------------------------------------------------
# One measured case


def percentile(sorted_vals: list[float], p: float) -> float:
    if not sorted_vals:
        return float("nan")
    k = min(len(sorted_vals) - 1, max(0, round(p / 100.0 * (len(sorted_vals) - 1))))
    return sorted_vals[k]


def run_case(
    args, port: int, nconns: int, server_roots: list[int], side_roots: dict | None = None
) -> dict:
    """
    One case. C{side_roots} names other process trees (e.g. a proxy's
    auth service) whose CPU is sampled over the same window and reported
    apart in C{side_cpu_us_per_session}.
    """
    side_roots = side_roots or {}
    ctx = multiprocessing.get_context("fork")
    nworkers = max(1, min(args.workers, nconns))
    shares = [nconns // nworkers + (1 if i < nconns % nworkers else 0) for i in range(nworkers)]
    login_line = b"a LOGIN " + astring(args.user) + b" " + astring(args.password) + b"\r\n"
    expect = args.expect or (
        r"a NO \[REFERRAL imap://"
        + re.escape(args.user)
        + r";AUTH=[^@\]]+@"
        + re.escape(args.referral_host)
        + r"[:/\]]"
    )
    t_start = time.monotonic() + 0.5
    t_measure = t_start + args.warmup
    t_end = t_measure + args.duration
    procs, pipes = [], []
    try:
        for share in shares:
            r, w = ctx.Pipe(duplex=False)
            p = ctx.Process(
                target=worker_main,
                args=(
                    share,
                    HOST,
                    port,
                    login_line,
                    expect,
                    t_start,
                    t_measure,
                    t_end,
                    args.session_timeout,
                    w,
                ),
                daemon=True,
            )
            p.start()
            w.close()
            procs.append(p)
            pipes.append(r)

        def sample():
            return (
                tree_cpu_ticks(server_roots) if server_roots else None,
                [proc_cpu_ticks(p.pid, children=False) or 0 for p in procs],
                machine_cpu(),
                {name: tree_cpu_ticks(roots) for name, roots in side_roots.items()},
            )

        while (d := t_measure - time.monotonic()) > 0:
            time.sleep(min(d, 0.2))
        s0 = sample()
        t0 = time.monotonic()
        while (d := t_end - time.monotonic()) > 0:
            time.sleep(min(d, 0.2))
        s1 = sample()
        window = time.monotonic() - t0

        results = []
        for r in pipes:
            if r.poll(args.session_timeout + 20):
                results.append(r.recv())
            else:
                raise RuntimeError("a load worker did not report back in time")
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
        for r in pipes:
            r.close()

    lat: list[float] = []
    greet: list[float] = []
    agg = {
        "sessions": 0,
        "referrals": 0,
        "bad_login_reply": 0,
        "errors": 0,
        "sessions_total": 0,
        "errors_total": 0,
    }
    kinds: dict[str, int] = {}
    first_bad = None
    for stats, lat_bytes, greet_bytes in results:
        for k in agg:
            agg[k] += stats[k]
        for k, v in stats["error_kinds"].items():
            kinds[k] = kinds.get(k, 0) + v
        first_bad = first_bad or stats["first_bad_reply"]
        a = array("d")
        a.frombytes(lat_bytes)
        lat.extend(a)
        a = array("d")
        a.frombytes(greet_bytes)
        greet.extend(a)
    lat.sort()
    greet.sort()

    sessions = agg["sessions"]
    dur = args.duration
    srv_s = None if s0[0] is None else (s1[0] - s0[0]) / CLK_TCK
    cli_each = [(b - a) / CLK_TCK for a, b in zip(s0[1], s1[1], strict=True)]
    cli_s = sum(cli_each)
    busy = s1[2][0] - s0[2][0]
    total = s1[2][1] - s0[2][1]
    irq = s1[2][2] - s0[2][2]
    # Busy CPU charged to neither the server nor the client: part of the
    # softirq time (loopback TCP), kernel threads, and other processes.
    side_s = {name: (s1[3][name] - s0[3][name]) / CLK_TCK for name in side_roots}
    other_s = busy / CLK_TCK - (srv_s or 0) - cli_s - sum(side_s.values())
    res = {
        "connections": nconns,
        "workers": nworkers,
        "duration_s": dur,
        "window_s": round(window, 3),
        "sessions": sessions,
        "sessions_per_s": sessions / dur,
        "referrals": agg["referrals"],
        "errors": agg["errors"],
        "bad_login_replies": agg["bad_login_reply"],
        "error_kinds": kinds,
        "first_bad_reply": first_bad,
        "sessions_incl_warmup": agg["sessions_total"],
        "errors_incl_warmup": agg["errors_total"],
        "login_rtt_ms": {
            "p50": percentile(lat, 50) * 1e3,
            "p90": percentile(lat, 90) * 1e3,
            "p99": percentile(lat, 99) * 1e3,
            "max": (lat[-1] if lat else float("nan")) * 1e3,
            "n": len(lat),
        },
        # connect() start -> greeting line: shows accept-queue (listen backlog)
        # overflows as ~1 s SYN retransmits in the max.
        "greeting_ms": {
            "p50": percentile(greet, 50) * 1e3,
            "p99": percentile(greet, 99) * 1e3,
            "max": (greet[-1] if greet else float("nan")) * 1e3,
            "n": len(greet),
        },
        "server_cpu_s": srv_s,
        "server_cpu_pct_of_core": None if srv_s is None else 100 * srv_s / window,
        "server_cpu_us_per_session": (
            None if srv_s is None or not sessions else 1e6 * srv_s / sessions
        ),
        "side_cpu_us_per_session": {
            name: 1e6 * cpu / sessions if sessions else None for name, cpu in side_s.items()
        },
        "client_cpu_s": cli_s,
        "client_cpu_pct_of_core_each_worker": [100 * c / window for c in cli_each],
        "client_cpu_us_per_session": 1e6 * cli_s / sessions if sessions else None,
        "machine_busy_pct": 100 * busy / total if total else None,
        "machine_irq_pct_of_core": 100 * irq / CLK_TCK / window,
        "other_cpu_pct_of_core": 100 * other_s / window,
        "ncpu": os.cpu_count(),
    }
    res["verdict"] = verdict(res, single_threaded_server=args.single_threaded_server)
    return res


def verdict(r: dict, single_threaded_server: bool) -> str:
    notes = []
    srv = r["server_cpu_pct_of_core"]
    workers = r["client_cpu_pct_of_core_each_worker"]
    if srv is not None and single_threaded_server and srv >= 90:
        notes.append(f"server saturated (one core at {srv:.0f}%)")
    if workers and max(workers) >= 90:
        notes.append(f"client saturated (a worker at {max(workers):.0f}% of a core)")
    if r["machine_busy_pct"] is not None and r["machine_busy_pct"] >= 95:
        notes.append(f"machine saturated ({r['machine_busy_pct']:.0f}% of all CPUs busy)")
    if not notes:
        notes.append("neither side CPU-saturated (latency/concurrency bound)")
    if srv is not None and r["client_cpu_s"] and r["server_cpu_s"]:
        notes.append(f"client/server CPU ratio {r['client_cpu_s'] / r['server_cpu_s']:.2f}")
    return "; ".join(notes)


def fmt(v, spec: str = ".0f", none: str = "n/a") -> str:
    return none if v is None else format(v, spec)


def print_case(r: dict) -> None:
    lat = r["login_rtt_ms"]
    print(
        f"--- {r['connections']} connections ({r['workers']} client worker processes), "
        f"{r['duration_s']:g}s measured (window {r['window_s']:.2f}s)"
    )
    print(f"  sessions/s           {r['sessions_per_s']:.1f}  ({r['sessions']} sessions)")
    print(
        f"  LOGIN RTT ms         p50 {lat['p50']:.2f}  p90 {lat['p90']:.2f}  "
        f"p99 {lat['p99']:.2f}  max {lat['max']:.2f}  (n={lat['n']})"
    )
    print(
        f"  referrals / errors   {r['referrals']} / {r['errors']}"
        + (f"  {r['error_kinds']}" if r["error_kinds"] else "")
    )
    g = r["greeting_ms"]
    print(
        f"  greeting ms          p50 {g['p50']:.2f}  p99 {g['p99']:.2f}  max {g['max']:.2f}"
        "  (connect -> greeting)"
    )
    if r["first_bad_reply"]:
        print(f"  first unexpected LOGIN reply: {r['first_bad_reply']!r}")
    print(
        f"  server CPU           {fmt(r['server_cpu_us_per_session'])} us/session, "
        f"{fmt(r['server_cpu_pct_of_core'])}% of one core"
    )
    for name, us in r.get("side_cpu_us_per_session", {}).items():
        print(f"  {name + ' CPU':<20} {fmt(us)} us/session (not in the server's)")
    each = " + ".join(f"{p:.0f}%" for p in r["client_cpu_pct_of_core_each_worker"])
    print(
        f"  client CPU           {fmt(r['client_cpu_us_per_session'])} us/session, "
        f"workers {each} of a core"
    )
    print(
        f"  machine busy         {fmt(r['machine_busy_pct'])}% of {r['ncpu']} CPUs"
        f" (irq+softirq {r['machine_irq_pct_of_core']:.0f}% of a core); charged to neither"
        f" server nor client: {r['other_cpu_pct_of_core']:.0f}% of a core"
    )
    print(f"  verdict              {r['verdict']}")


# ---------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Sessions/s of IMAP LOGIN -> NO [REFERRAL] -> LOGOUT against imapreferral.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--connections",
        "-c",
        type=int,
        nargs="+",
        default=[16, 64],
        help="concurrent sessions; several values make a sweep",
    )
    p.add_argument("--duration", "-d", type=float, default=10.0, help="measured seconds per case")
    p.add_argument("--warmup", "-W", type=float, default=2.0, help="unmeasured seconds first")
    p.add_argument("--workers", type=int, default=2, help="client processes")
    p.add_argument(
        "--port",
        "-p",
        type=int,
        default=0,
        help="port to spawn the server on (0: a free one) or, with --no-spawn, to use",
    )
    p.add_argument(
        "--no-spawn",
        action="store_true",
        help="drive an already-running server on 127.0.0.1:--port",
    )
    p.add_argument(
        "--server-cmd",
        default=None,
        help="command to spawn instead of the venv's twistd imapreferral; "
        "{port} and {passwd} (the temporary passwd-file) are substituted",
    )
    p.add_argument(
        "--server-pid",
        type=int,
        action="append",
        default=[],
        help="with --no-spawn: a process whose tree's CPU is the server's (repeatable)",
    )
    p.add_argument(
        "--server-workers",
        type=int,
        default=1,
        help="server processes sharing the listener (twistd imapreferral --workers)",
    )
    p.add_argument(
        "--passdb-kind",
        choices=("passwd-file", "sql", "pgsql"),
        default="passwd-file",
        help="passdb of the spawned server: a passwd-file, SQLite ('sql') or a throwaway "
        "PostgreSQL cluster ('pgsql') through a Dovecot SQL config",
    )
    p.add_argument(
        "--server-args",
        default="",
        help="more arguments for the spawned twistd imapreferral, split as a shell would, "
        "e.g. --server-args '--log-logins no'; one word starting with - needs the = form: "
        "--server-args=--log-logins=no",
    )
    p.add_argument("--user", default="refnl")
    p.add_argument("--password", default="pass")
    p.add_argument(
        "--referral-host", default="imap2.example.com", help="host the referral URL must name"
    )
    p.add_argument(
        "--expect",
        default=None,
        help="regex the tagged LOGIN reply must match (default: "
        "a NO [REFERRAL imap://USER;AUTH=...@REFERRAL-HOST...)",
    )
    p.add_argument("--session-timeout", type=float, default=10.0)
    p.add_argument("--startup-timeout", type=float, default=30.0)
    p.add_argument("--stop-timeout", type=float, default=10.0)
    p.add_argument(
        "--versus-dovecot",
        action="store_true",
        help="also start a private Dovecot (if installed) with the same user line and run "
        "each case against both, back to back; print both sides and the ratio "
        "(benchmarks/versus_dovecot.py)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="with --versus-dovecot: pairs of runs per --connections value, the order "
        "alternating from round to round",
    )
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument(
        "--keep-log",
        action="store_true",
        help="copy the server log out of the temporary directory before it is removed",
    )
    args = p.parse_args(argv)
    if args.no_spawn and not args.port:
        p.error("--no-spawn needs --port")
    if args.versus_dovecot and (args.no_spawn or args.passdb_kind != "passwd-file"):
        p.error("--versus-dovecot spawns our server with a passwd-file, as Dovecot gets")
    if args.rounds < 1:
        p.error("--rounds >= 1")
    if args.duration <= 0 or args.warmup < 0 or args.workers < 1 or min(args.connections) < 1:
        p.error("--duration > 0, --warmup >= 0, --workers >= 1, --connections >= 1")
    return args


def passwdLine(args: argparse.Namespace) -> str:
    """
    The one passwd-file line of the benchmark user, in Dovecot's syntax, so
    that our server and Dovecot (--versus-dovecot) read the same line.
    """
    return f"{args.user}:{{PLAIN}}{args.password}::::::host={args.referral_host} nologin nodelay\n"


def spawnServer(
    args: argparse.Namespace, directory: Path, cleanups: list
) -> tuple[subprocess.Popen, int, Path]:
    """
    Start our server as configured by C{args} (the venv's twistd
    imapreferral, or --server-cmd) with logging on, in C{directory}, and wait
    until it greets. Sets C{args.single_threaded_server}.

    @return: the process, its port and its log file.
    """
    port = args.port or free_port()
    passwd = directory / "users.passwd"
    passwd.write_text(passwdLine(args))
    if args.server_cmd:
        cmd = shlex.split(args.server_cmd.format(port=port, passwd=passwd))
        args.single_threaded_server = False
    else:
        twistd = Path(sys.executable).with_name("twistd")
        cmd = [
            str(twistd),
            "-n",
            "--pidfile=",
            "imapreferral",
            "--listen",
            f"tcp:{port}:interface={HOST}:backlog=512",
            "--passdb",
            passdbFor(args.passdb_kind, directory, args, cleanups),
            "--auth-failure-delay",
            "0",
            "--workers",
            str(args.server_workers),
            *shlex.split(args.server_args),
        ]
        args.single_threaded_server = args.server_workers == 1
    log_path = directory / "server.log"
    print("server:", shlex.join(cmd))
    print(f"server log (logging on): {log_path}")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=directory,
            preexec_fn=_die_with_parent,
        )
    try:
        wait_for_port(port, args.startup_timeout, proc)
    except BaseException:
        stop_server(proc, args.stop_timeout)
        print("server log tail:\n" + "\n".join(_logTail(log_path)))
        raise
    return proc, port, log_path


def _logTail(path: Path, lines: int = 15) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def stopAndReport(
    proc: subprocess.Popen, log_path: Path, args: argparse.Namespace, measured: bool
) -> None:
    """
    Stop our server, then print how it stopped and what it logged (the
    log's tail too when it failed or nothing was measured); with --keep-log,
    copy the log out of the temporary directory.
    """
    print(f"server {stop_server(proc, args.stop_timeout)}")
    try:
        text = log_path.read_text(errors="replace")
        lines = text.count("\n")
        referred = text.count(": referred ")
        print(f"server log: {lines} lines, {referred} 'referred' login lines")
        if proc.returncode not in (0, -signal.SIGTERM) or not measured:
            print("server log tail:\n" + "\n".join(text.splitlines()[-15:]))
    except OSError:
        pass
    if args.keep_log:
        keep = Path(tempfile.gettempdir()) / f"imapreferral-bench-server-{os.getpid()}.log"
        try:
            keep.write_bytes(log_path.read_bytes())
            print(f"server log kept at {keep}")
        except OSError:
            pass


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    print("benchmark:", shlex.join([sys.executable, *sys.argv]))
    if args.versus_dovecot:
        import versus_dovecot

        return versus_dovecot.main(args)
    tmp = tempfile.TemporaryDirectory(prefix="imapreferral-bench-")
    proc: subprocess.Popen | None = None
    log_path = Path(tmp.name) / "server.log"
    all_results = []
    cleanups: list = []

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, on_signal)
    try:
        if args.no_spawn:
            port = args.port
            server_roots = list(args.server_pid)
            args.single_threaded_server = False
            print(
                f"server: not spawned, using {HOST}:{port}"
                + (
                    f", CPU of process tree(s) {server_roots}"
                    if server_roots
                    else " (server CPU not measured: give --server-pid)"
                )
            )
        else:
            proc, port, log_path = spawnServer(args, Path(tmp.name), cleanups)
            server_roots = [proc.pid]
        print(
            f"client: {args.workers} worker processes (selectors, raw sockets), "
            f"warm-up {args.warmup:g}s, {os.cpu_count()} CPUs"
        )
        for n in args.connections:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"server died (status {proc.returncode})")
            r = run_case(args, port, n, server_roots)
            all_results.append(r)
            print_case(r)
            sys.stdout.flush()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, old_term)
        if proc is not None:
            stopAndReport(proc, log_path, args, bool(all_results))
        for cleanup in cleanups:
            cleanup()
        tmp.cleanup()
        if args.json and all_results:
            with open(args.json, "w") as f:
                json.dump(
                    {"argv": [sys.executable, *sys.argv], "results": all_results}, f, indent=2
                )
    if all_results:
        print()
        print(
            f"{'conns':>5} {'sess/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'referrals':>10} "
            f"{'errors':>7} {'greet max':>9} {'srv us/s':>9} {'srv %core':>9} {'cli us/s':>9} {'cli %core':>11} {'other %core':>11}"
        )
        for r in all_results:
            lat = r["login_rtt_ms"]
            cli = "+".join(f"{p:.0f}" for p in r["client_cpu_pct_of_core_each_worker"])
            print(
                f"{r['connections']:>5} {r['sessions_per_s']:>9.1f} {lat['p50']:>8.2f} "
                f"{lat['p99']:>8.2f} {r['referrals']:>10} {r['errors']:>7} "
                f"{r['greeting_ms']['max']:>9.1f} "
                f"{fmt(r['server_cpu_us_per_session']):>9} {fmt(r['server_cpu_pct_of_core']):>9} "
                f"{fmt(r['client_cpu_us_per_session']):>9} {cli:>11} "
                f"{r['other_cpu_pct_of_core']:>11.0f}"
            )
    bad = any(r["errors"] or not r["referrals"] for r in all_results)
    return 2 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
