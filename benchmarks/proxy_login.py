"""
Proxied login sessions per second: our front vs Dovecot's own proxy and
nginx mail, side by side, to the same backend Dovecot.

Starts on loopback (ports from the OS):
  * a backend Dovecot (``tests/dovecotbackend.py``; user alice, password
    secret; ``mail_max_userip_connections`` raised so the load fits);
  * Dovecot as a proxy: a second private Dovecot whose passdb says
    ``alice:{PLAIN}secret::::::proxy=y host=127.0.0.1 port=BACKEND``;
  * ``twistd imapreferral`` (one process, logging on) with the same line
    in our syntax (``proxy host=127.0.0.1 port=BACKEND``);
  * nginx mail, if ``nginx`` and its mail module are installed (Debian:
    ``nginx-light libnginx-mod-mail``): a private nginx (own prefix,
    config, pid and logs; ``master_process on``, ``worker_processes 1``
    like our one process; ``error_log info``, so it logs each session as
    the other two fronts do) with ``mail { auth_http ...; server { protocol
    imap; proxy on; } }``, and a second private nginx (same settings,
    ``access_log off``) as the ``auth_http`` service, answering every
    request with ``Auth-Status: OK``, ``Auth-Server: 127.0.0.1``,
    ``Auth-Port: BACKEND`` (``add_header`` + ``return 204``).

Then, for each --connections value, runs ``referral_login.py``'s load
(connect, LOGIN, tagged OK, LOGOUT, over and over) against each front in
turn: sessions/s, LOGIN p50/p99 and the front's CPU µs per session
(utime+stime of its process tree, from /proc: nginx's master and worker;
the backend's CPU is not counted for any; nginx's auth_http service is
counted apart, in its own column).

    .venv/bin/python benchmarks/proxy_login.py
    .venv/bin/python benchmarks/proxy_login.py --connections 1 16 64 --duration 10
    .venv/bin/python benchmarks/proxy_login.py --fronts imapreferral nginx
    # the backend's imap processes reused (no fork per login): it then
    # bounds the fronts less, and the fronts' CPU shows more plainly
    .venv/bin/python benchmarks/proxy_login.py --backend-reuse

Prints its command line, each case, and a table of all. Not a test:
nothing is asserted. Needs Dovecot (``dovecot-imapd``) and Linux.
"""

from __future__ import annotations

import argparse
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
from dovecotbackend import DovecotBackend, dovecotExecutable  # noqa: E402

EXPECT = r"a OK \[CAPABILITY IMAP4rev1 "


def _backend(reuse: bool = False) -> DovecotBackend:
    backend = DovecotBackend(dovecotExecutable())
    with open(backend.configPath, "a") as config:
        config.write("protocol imap {\n  mail_max_userip_connections = 100000\n}\n")
        if reuse:  # imap processes serve session after session: no fork per login
            config.write("service imap {\n  service_count = 0\n  process_min_avail = 4\n}\n")
    return backend.start()


def _dovecotProxy(backendPort: int) -> DovecotBackend:
    front = DovecotBackend(dovecotExecutable())
    (front.directory / "users").write_text(
        f"alice:{{PLAIN}}secret::::::proxy=y host=127.0.0.1 port={backendPort}\n"
    )
    return front.start()


def ourFront(
    backendPort: int, directory: Path, twistd: Path | None = None
) -> tuple[subprocess.Popen, int]:
    """Our twistd (C{twistd}, default: this Python's) proxying alice to C{backendPort}."""
    passwd = directory / "users.passwd"
    passwd.write_text(f"alice:{{PLAIN}}secret::::::proxy host=127.0.0.1 port={backendPort}\n")
    port = referral_login.free_port()
    cmd = [
        str(twistd or Path(sys.executable).with_name("twistd")), "-n", "--pidfile=", "imapreferral",
        "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=512",
        "--passdb", f"passwd-file:{passwd}", "--auth-failure-delay", "0",
    ]  # fmt: skip
    print("our front:", shlex.join(cmd))
    log = open(directory / f"front-{port}.log", "wb")  # lives as long as the process
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=directory
    )
    referral_login.wait_for_port(port, 30, proc)
    return proc, port


NGINX_MAIL_MODULE = Path("/usr/lib/nginx/modules/ngx_mail_module.so")

_NGINX_COMMON = """\
daemon off;
master_process on;
worker_processes 1;
pid {dir}/{name}.pid;
error_log {dir}/{name}-error.log {level};
events {{
    worker_connections 8192;
}}
"""

_NGINX_MAIL = """\
load_module {module};
{common}
mail {{
    auth_http 127.0.0.1:{authPort}/auth;
    server {{
        listen 127.0.0.1:{port} backlog=512;
        protocol imap;
        imap_auth login plain;
        proxy on;
    }}
}}
"""

_NGINX_AUTH = """\
{common}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp-body;
    proxy_temp_path {dir}/tmp-proxy;
    fastcgi_temp_path {dir}/tmp-fastcgi;
    uwsgi_temp_path {dir}/tmp-uwsgi;
    scgi_temp_path {dir}/tmp-scgi;
    server {{
        listen 127.0.0.1:{authPort} backlog=512;
        location = /auth {{
            add_header Auth-Status OK;
            add_header Auth-Server 127.0.0.1;
            add_header Auth-Port {backendPort};
            return 204;
        }}
    }}
}}
"""


def nginxExecutable() -> str | None:
    """nginx with a loadable mail module, or None (the nginx front is then left out)."""
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    return nginx if nginx is not None and NGINX_MAIL_MODULE.exists() else None


def _startNginx(nginx: str, directory: Path, name: str, config: str, port: int):
    path = directory / f"{name}.conf"
    path.write_text(config)
    errors = directory / f"{name}-error.log"
    cmd = [nginx, "-p", str(directory), "-c", str(path), "-e", str(errors)]
    print(f"nginx {name}:", shlex.join(cmd))
    out = open(directory / f"{name}.out", "wb")  # lives as long as the process
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        _waitForListener(port, 30, proc)
    except BaseException:
        _stop(proc)
        raise
    return proc


def _waitForListener(port: int, timeout: float, proc: subprocess.Popen) -> None:
    """Until something accepts on C{port} (bounded); the process must not exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited early with status {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} within {timeout:.0f}s")


def _nginxFront(nginx: str, backendPort: int, directory: Path):
    """The auth_http nginx and the mail nginx: (mail process, port, auth process)."""
    directory = directory / "nginx"
    directory.mkdir()
    authPort, port = referral_login.free_port(), referral_login.free_port()
    common = {"dir": directory, "authPort": authPort, "port": port, "backendPort": backendPort}
    auth = _startNginx(
        nginx, directory, "auth",
        _NGINX_AUTH.format(common=_NGINX_COMMON.format(name="auth", level="warn", **common),
                           **common),
        authPort,
    )  # fmt: skip
    try:
        mail = _startNginx(
            nginx, directory, "mail",
            _NGINX_MAIL.format(common=_NGINX_COMMON.format(name="mail", level="info", **common),
                               module=NGINX_MAIL_MODULE, **common),
            port,
        )  # fmt: skip
    except BaseException:
        _stop(auth)
        raise
    return mail, port, auth


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


FRONTS = ("imapreferral", "dovecot-proxy", "nginx")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", "-c", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--duration", "-d", type=float, default=5.0)
    p.add_argument("--warmup", "-W", type=float, default=1.0)
    p.add_argument("--workers", type=int, default=2, help="client processes")
    p.add_argument("--fronts", nargs="+", choices=FRONTS, default=list(FRONTS))
    p.add_argument(
        "--backend-reuse",
        action="store_true",
        help="the backend's imap processes serve many sessions (service_count = 0): "
        "it then forks no process per login and bounds the fronts less",
    )
    args = p.parse_args(argv)
    print("benchmark:", shlex.join([sys.executable, *sys.argv]))
    nginx = nginxExecutable() if "nginx" in args.fronts else None
    if "nginx" in args.fronts and nginx is None:
        print(f"nginx front left out: no nginx with {NGINX_MAIL_MODULE} (libnginx-mod-mail)")
    backend = _backend(args.backend_reuse)
    dovecot = ours = mail = auth = None
    rows = []
    with tempfile.TemporaryDirectory(prefix="imapreferral-proxybench-") as tmp:
        try:
            print(f"backend Dovecot 127.0.0.1:{backend.port}")
            fronts = []
            if "imapreferral" in args.fronts:
                ours, ourPort = ourFront(backend.port, Path(tmp))
                fronts.append(("imapreferral", ourPort, [ours.pid], {}))
            if "dovecot-proxy" in args.fronts:
                dovecot = _dovecotProxy(backend.port)
                print(f"Dovecot proxy 127.0.0.1:{dovecot.port} (config {dovecot.configPath})")
                fronts.append(("dovecot-proxy", dovecot.port, [dovecot._process.pid], {}))
            if nginx is not None:
                mail, mailPort, auth = _nginxFront(nginx, backend.port, Path(tmp))
                fronts.append(("nginx", mailPort, [mail.pid], {"auth_http": [auth.pid]}))
            for n in args.connections:
                for name, port, roots, side in fronts:
                    print(f"\n=== {name}, {n} connections ===", flush=True)
                    case = referral_login.parse_args(
                        ["--no-spawn", "--port", str(port), "--user", "alice",
                         "--password", "secret", "--expect", EXPECT, "--connections", str(n),
                         "--duration", str(args.duration), "--warmup", str(args.warmup),
                         "--workers", str(args.workers)]
                    )  # fmt: skip
                    case.single_threaded_server = name == "imapreferral"
                    result = referral_login.run_case(case, port, n, roots, side)
                    referral_login.print_case(result)
                    rows.append((name, result))
                    sys.stdout.flush()
        finally:
            _stop(ours)
            _stop(mail)
            _stop(auth)
            if dovecot is not None:
                dovecot.stop()
            backend.stop()
            _logSizes(Path(tmp))
    _table(rows)
    return 2 if any(r["errors"] or not r["sessions"] for _, r in rows) else 0


def _logSizes(directory: Path) -> None:
    """Each front logs every session: how many lines each wrote, as a check."""
    for name, path in (("imapreferral", "front.log"), ("nginx mail", "nginx/mail-error.log")):
        if (directory / path).exists():
            text = (directory / path).read_text(errors="replace")
            print(f"{name} log: {text.count(chr(10))} lines; last: {text.splitlines()[-1:]}")


def _table(rows: list) -> None:
    fmt = referral_login.fmt
    print()
    print("| conns | front | sessions/s | LOGIN p50 / p99 ms | front CPU µs/session "
          "| auth_http µs/session | errors | other %core |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        lat = r["login_rtt_ms"]
        side = r["side_cpu_us_per_session"].get("auth_http")
        print(
            f"| {r['connections']} | {name} | {r['sessions_per_s']:.1f} "
            f"| {lat['p50']:.2f} / {lat['p99']:.2f} | {fmt(r['server_cpu_us_per_session'])} "
            f"| {fmt(side, none='-')} | {r['errors']} | {r['other_cpu_pct_of_core']:.0f} |"
        )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
