"""The command line: plugin discovery, options, refusal of bad values, and a real twistd."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.python.usage import UsageError

from imapreferral import tap


def test_pluginIsDiscoverable():
    makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
    maker = makers["imapreferral"]
    options = maker.options()
    options.parseOptions(["--listen", "tcp:0:interface=127.0.0.1"])
    assert maker.makeService(options) is not None


def test_defaultsServeBundledExample():
    options = tap.Options()
    options.parseOptions([])
    assert options["listen"] == ["tcp:1143:interface=127.0.0.1:backlog=512"]
    passwd, sql = options["passdb"]
    assert passwd.path == tap.EXAMPLE_PASSWD and sql.config.path == tap.EXAMPLE_SQL
    assert options["auth-failure-delay"] == 2.0
    assert options["referral-auth"] == "mech"


def test_allOptions(tmp_path):
    passwd = tmp_path / "u.passwd"
    passwd.write_text("u:p\n")
    options = tap.Options()
    options.parseOptions(
        [
            "--listen", "tcp:1143:interface=127.0.0.1",
            "--listen", "tcp6:1143:interface=\\:\\:1",
            "--passdb", f"passwd-file:{passwd}",
            "--passdb", "static:host=imap2.example.com nologin nopassword nodelay",
            "--auth-failure-delay", "0.5",
            "--referral-auth", "*",
            "--greeting", "hello",
        ]
    )  # fmt: skip
    assert len(options["listen"]) == 2 and len(options["passdb"]) == 2
    assert options["auth-failure-delay"] == 0.5 and options["referral-auth"] == "*"
    assert tap.makeService(options) is not None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--auth-failure-delay", "soon"], "--auth-failure-delay 'soon': not a number"),
        (["--auth-failure-delay", "-1"], "must be 0..3600"),
        (["--referral-auth", "PLAIN"], "--referral-auth 'PLAIN'"),
        (["--listen", "nonsense:1"], "--listen 'nonsense:1'"),
    ],
)
def test_badOptionsAreRefused(args, message):
    with pytest.raises(UsageError) as e:
        tap.Options().parseOptions(args)
    assert message in str(e.value)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--passdb", "ldap:x"], "imapreferral: --passdb 'ldap:x'"),
        (["--passdb", "passwd-file:/nonexistent/u.passwd"], "/nonexistent/u.passwd: cannot read"),
    ],
)
def test_badPassdbStopsWithOneLine(args, message):
    with pytest.raises(SystemExit) as e:
        tap.Options().parseOptions(args)
    assert message in str(e.value) and "\n" not in str(e.value)


def _freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def _twistd(*args: str, cwd: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent))
    return subprocess.Popen(
        [*TWISTD, "-n", "--pidfile=", "imapreferral", *args],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


def test_twistdServesReferralsAndLogsNoPassword(tmp_path):
    port = _freePort()
    proc = _twistd("--listen", f"tcp:{port}:interface=127.0.0.1", cwd=str(tmp_path))
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, "twistd did not start listening"
                assert proc.poll() is None, proc.stdout.read().decode()
                time.sleep(0.1)
        with sock:
            f = sock.makefile("rb")
            assert f.readline().startswith(b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS")
            sock.sendall(b"a LOGIN refnl pass\r\n")
            assert f.readline() == (
                b"a NO [REFERRAL imap://refnl;AUTH=PLAIN@imap2.example.com/] Try this server instead.\r\n"
            )
            sock.sendall(b"b LOGIN sqlref pass\r\n")
            assert f.readline() == (
                b"b NO [REFERRAL imap://sqlref;AUTH=PLAIN@imap3.example.com/] Try this server instead.\r\n"
            )
            sock.sendall(b"z LOGOUT\r\n")
            assert f.readline() == b"* BYE Logging out\r\n"
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0].decode()
    assert "imapreferral serving" in out and "users.passwd" in out
    assert (
        f"login remote=127.0.0.1 local=127.0.0.1:{port} mech=PLAIN: referred "
        'user="refnl" referral="imap://refnl;AUTH=PLAIN@imap2.example.com/"' in out
    )
    assert "pass" not in out.replace("passwd", "").replace("passdb", "")


def test_twistdRefusesMalformedPasswdFileWithFileAndLine(tmp_path):
    bad = tmp_path / "bad.passwd"
    bad.write_text("good:p\nbroken:p::::::port=http\n")
    proc = _twistd("--passdb", f"passwd-file:{bad}", cwd=str(tmp_path))
    out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode != 0
    assert out == f"imapreferral: {bad}:2: port='http' is not a port number (0-65535)\n"


def test_haproxyListenerNeedsTrustedNetworks():
    with pytest.raises(UsageError, match="--haproxy-trusted-networks"):
        tap.Options().parseOptions(["--listen", "haproxy:tcp:0:interface=127.0.0.1"])


def test_haproxyListenerWrapsWithOurProxyProtocol():
    options = tap.Options()
    options.parseOptions(
        [
            "--listen",
            "haproxy:tcp:0:interface=127.0.0.1",
            "--haproxy-trusted-networks",
            "127.0.0.1",
        ]
    )
    service = tap.makeService(options)
    (listener,) = [s for s in service if hasattr(s, "endpoint")]
    assert type(listener.factory).__module__ == "imapreferral.haproxy"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen-tls", "tcp:0"], "--listen-tls needs --tls-cert"),
        (["--tls-cert", "x.pem"], "--tls-cert and --tls-key go together"),
        (["--plaintext-auth", "never"], "--plaintext-auth 'never'"),
        (["--trusted-networks", "10.0.0.0/99"], "--trusted-networks"),
        (["--greeting-referral", "imap://h"], "--greeting-referral"),
        (["--max-connections", "many"], "--max-connections 'many'"),
    ],
)
def test_badFrontDoorOptionsAreRefused(args, message):
    with pytest.raises(UsageError) as e:
        tap.Options().parseOptions(args)
    assert message in str(e.value)


def test_badCertificateStopsWithOneLine(tmp_path):
    with pytest.raises(SystemExit) as e:
        tap.Options().parseOptions(
            ["--tls-cert", str(tmp_path / "no.crt"), "--tls-key", str(tmp_path / "no.key")]
        )
    assert "no.crt: cannot read TLS certificate" in str(e.value)


@pytest.mark.parametrize(
    "argv",
    [
        ["twistd", "-n", "imapreferral", "--workers", "3", "--listen", "tcp:1"],
        ["twistd", "-n", "imapreferral", "--workers=3", "--listen", "tcp:1"],
    ],
)
def test_workerArguments(argv):
    from imapreferral.workers import workerArguments

    assert workerArguments(argv, 2)[3:] == [
        "-n", "--pidfile=", "-n", "imapreferral", "--adopt-listeners=2", "--listen", "tcp:1",
    ]  # fmt: skip


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def test_workersShareTheListenerAndStopWithTheServer(tmp_path):
    port = _freePort()
    proc = _twistd(
        "--listen", f"tcp:{port}:interface=127.0.0.1", "--workers", "2", cwd=str(tmp_path)
    )
    try:
        deadline = time.monotonic() + 20
        while not _children(proc.pid):
            assert time.monotonic() < deadline, "no worker was started"
            assert proc.poll() is None
            time.sleep(0.1)
        (worker,) = _children(proc.pid)
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                f = sock.makefile("rb")
                assert f.readline().startswith(b"* OK ")
                sock.sendall(b"a LOGIN refnl pass\r\n")
                assert f.readline().startswith(b"a NO [REFERRAL imap://refnl;")
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0].decode()
    assert "started 1 more worker processes" in out
    deadline = time.monotonic() + 15
    while os.path.exists(f"/proc/{worker}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{worker}"), "the worker outlived the server"
