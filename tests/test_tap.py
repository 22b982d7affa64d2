"""The command line: plugin discovery, options, refusal of bad values, and a real twistd."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins

from imapreferral import tap
from imapreferral.listeners import ListenerService
from imapreferral.testing import TranscriptClient


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


def test_referralModeAndClientNamesReachCheckerAndPolicy():
    options = tap.Options()
    options.parseOptions(
        [
            "--listen", "tcp:0:interface=127.0.0.1",
            "--referral-mode", "auto",
            "--referral-client-names", " MyMailer,Alpine ,",
        ]
    )  # fmt: skip
    factory = tap.makeService(options).factory
    (checker,) = set(factory.portal.checkers.values())
    assert checker.referralMode == "auto"
    assert factory.policy.referralClientNames == ("mymailer", "alpine")


def test_referralModeDefaultsToRefer():
    options = tap.Options()
    options.parseOptions(["--listen", "tcp:0:interface=127.0.0.1"])
    factory = tap.makeService(options).factory
    (checker,) = set(factory.portal.checkers.values())
    assert checker.referralMode == "refer"
    assert factory.policy.referralClientNames == ("c-client", "alpine", "pine")


def _refusal(args: list[str]) -> str:
    """The one line parsing C{args} stops with."""
    with pytest.raises(SystemExit) as e:
        tap.Options().parseOptions(args)
    message = str(e.value.code)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("--auth-failure-delay soon", "--auth-failure-delay soon: not a number"),
        ("--auth-failure-delay -1", "--auth-failure-delay -1: must be 0..3600"),
        ("--referral-auth PLAIN", "--referral-auth PLAIN: use 'mech' or '*'"),
        ("--referral-mode sometimes", "--referral-mode sometimes: use 'refer', 'proxy' or 'auto'"),
        ("--listen nonsense:1", "--listen nonsense:1: Unknown endpoint type"),
        ("--listen tcp:99999", "--listen tcp:99999: port 99999 out of range"),
        ("--max-connections abc", "--max-connections abc: not a whole number"),
        ("--max-connections ²", "--max-connections '²': not a whole number"),
        ("--workers 0", "--workers 0: must be at least 1"),
        ("--passdb static:", "--passdb static: needs fields, e.g. "),
        (
            "--passdb static:host=imap2",
            "--passdb static:host=imap2: needs password= or nopassword",
        ),
        ("--bogus", "option --bogus not recognized"),
        ("--listen", "option --listen requires argument"),
        ("--listen-tls tcp:0:interface=127.0.0.1", "--listen-tls needs --tls-cert"),
        ("--tls-cert x.pem", "--tls-cert and --tls-key go together"),
        ("--plaintext-auth never", "--plaintext-auth never: use 'secure' or 'always'"),
        ("--trusted-networks 10.0.0.0/99", "--trusted-networks: "),
        ("--greeting-referral imap://h", "--greeting-referral: "),
        ("--passdb ldap:x", "--passdb ldap:x: expected TYPE:ARGUMENT"),
        ("--passdb passwd-file:/nonexistent/u", "/nonexistent/u: cannot read"),
        ("--proxy-max-reconnects x", "--proxy-max-reconnects x: not a whole number"),
        (
            "--local-backend port=143",
            "--local-backend port=143: give host= (and port= unless 143)",
        ),
        ("--local-backend port=x", "--local-backend port=x: port='x' is not a port number"),
        ("--proxy-self nonsense", "--proxy-self nonsense: not ADDRESS:PORT (e.g. 192.0.2.1:143)"),
        ("--proxy-self 192.0.2.1:0", "--proxy-self 192.0.2.1:0: not ADDRESS:PORT"),
        (
            "--backend-ca /nonexistent/ca.pem",
            "--backend-ca /nonexistent/ca.pem: cannot read (No such file or directory)",
        ),
        ("--backend-ca /etc/hostname", "--backend-ca /etc/hostname: no valid PEM certificate"),
        (
            "--listen tcp:0:interface=127.0.0.1 --listen haproxy:tcp:0",
            "--listen haproxy:tcp:0 expects PROXY headers: say who may send them with "
            "--haproxy-trusted-networks",
        ),
    ],
    ids=lambda v: v if v.startswith("--") else None,
)
def test_badOptionStopsWithOneLine(args, message):
    assert _refusal(args.split()).startswith(f"imapreferral: {message}")


@pytest.mark.parametrize(
    "args",
    [
        "--listen tcp:1143",
        "--listen tcp:1143:interface=0.0.0.0",
        "--listen tcp6:1143:interface=\\:\\:",
        "--listen tcp:1143:interface=192.0.2.1",
        "--listen tcp:1143:interface=127.0.0.1 --listen-tls tcp:993",
        "--listen haproxy:tcp:1143:interface=127.0.0.1 --haproxy-trusted-networks 127.0.0.1",
    ],
)
def test_exampleUsersAreNotServedToOtherHosts(args):
    """Their password is 'pass'. A haproxy: listener is reached through the proxy."""
    message = _refusal(args.split())
    assert message.startswith("imapreferral: --listen")
    assert message.endswith(
        " is reachable from other hosts: give --passdb (without it the "
        "bundled example users, password 'pass', are served, on loopback only)"
    )


@pytest.mark.parametrize(
    "args",
    [
        "",
        "--listen tcp6:0:interface=\\:\\:1",
        "--listen unix:imapreferral.sock",
        "--listen tcp:0 --passdb passwd-file:" + tap.EXAMPLE_PASSWD,
        "--listen tcp:0 --greeting-referral imap://imap2.example.com/",
    ],
    ids=["the demo", "IPv6 loopback", "UNIX socket", "own passdb", "greeting referral"],
)
def test_exampleUsersOnLoopbackOrAPassdbOfOurOwnStart(args):
    tap.Options().parseOptions(args.split())


def test_helpStillPrintsTheHelp(capsys):
    with pytest.raises(SystemExit) as e:
        tap.Options().parseOptions(["--help"])
    assert e.value.code == 0
    assert "--max-connections=" in capsys.readouterr().out


def test_helpDoesNotShowWorkerPlumbing(capsys):
    """Workers learn what to adopt from the environment, not from an option."""
    with pytest.raises(SystemExit):
        tap.Options().parseOptions(["--help"])
    assert "adopt" not in capsys.readouterr().out
    assert _refusal(["--adopt-listeners=1"]) == (
        "imapreferral: option --adopt-listeners not recognized"
    )


def test_workerAdoptsAsManySocketsAsItsEnvironmentSays(monkeypatch):
    monkeypatch.setenv("IMAPREFERRAL_ADOPT_LISTENERS", "2")
    options = tap.Options()
    options.parseOptions(["--listen", "unix:a.sock", "--listen", "unix:b.sock"])
    assert options["adopt-listeners"] == 2


@pytest.mark.parametrize(
    ("mechanisms", "offered", "cramReply"),
    [
        ([], b"AUTH=PLAIN AUTH=LOGIN AUTH=CRAM-MD5", b"+ "),
        (["--auth-mechanisms", "PLAIN,LOGIN"], b"AUTH=PLAIN AUTH=LOGIN]", b"a NO "),
        (["--auth-mechanisms", "plain"], b"AUTH=PLAIN]", b"a NO "),
    ],
    ids=["default", "without CRAM-MD5", "PLAIN only"],
)
@pytest_twisted.ensureDeferred
async def test_authMechanismsChooseWhatIsOfferedAndAccepted(
    tmp_path, mechanisms, offered, cramReply
):
    """Alpine tries each advertised mechanism three times before it follows a referral."""
    from twisted.internet import reactor

    passwd = tmp_path / "u.passwd"
    passwd.write_text("u:{PLAIN}pass::::::host=imap2.example.com nologin\n")
    options = tap.Options()
    options.parseOptions(
        ["--listen", "tcp:0:interface=127.0.0.1", "--passdb", f"passwd-file:{passwd}", *mechanisms]
    )
    service = tap.makeService(options)
    service.privilegedStartService()
    service.startService()
    try:
        (listener,) = [s for s in service if isinstance(s, ListenerService)]
        port = (await listener._waitingForPort).getHost().port
        client = await TranscriptClient.connect(reactor, "127.0.0.1", port)
        try:
            assert offered in client.greeting
            assert (await client.command(b"a AUTHENTICATE CRAM-MD5"))[-1].startswith(cramReply)
        finally:
            await client.close()
    finally:
        await service.stopService()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            "--auth-mechanisms PLAIN,XOAUTH2",
            "unknown mechanism XOAUTH2 (use PLAIN, LOGIN, CRAM-MD5)",
        ),
        ("--auth-mechanisms ,", "no mechanism named (use PLAIN, LOGIN, CRAM-MD5)"),
        (
            "--auth-mechanisms CRAM-MD5 --passdb static:nopassword",
            "CRAM-MD5 needs plaintext or {CRAM-MD5} passwords, and no passdb or checker may hold them",
        ),
    ],
    ids=["unknown", "empty", "CRAM-MD5 without plaintext"],
)
def test_badAuthMechanismsStopWithOneLine(args, message):
    assert _refusal(args.split()).endswith(message)


def test_badCertificateStopsWithOneLine(tmp_path):
    message = _refusal(
        ["--tls-cert", str(tmp_path / "no.crt"), "--tls-key", str(tmp_path / "no.key")]
    )
    assert message.startswith(f"imapreferral: {tmp_path / 'no.crt'}: cannot read TLS certificate")


def _freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def _environment(pythonpath: Sequence[str | Path] = ()) -> dict[str, str]:
    """Our environment, with this checkout (and C{pythonpath} before it) on C{sys.path}."""
    paths = [*map(str, pythonpath), str(Path(__file__).parent.parent)]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths))


def _twistd(
    *args: str, cwd: str, preexec_fn: Any = None, pythonpath: Sequence[str | Path] = ()
) -> subprocess.Popen:
    env = _environment(pythonpath)
    return subprocess.Popen(
        [*TWISTD, "-n", "--pidfile=", "imapreferral", *args],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        preexec_fn=preexec_fn,
    )  # fmt: skip


def _connectWhenListening(proc: subprocess.Popen, port: int) -> socket.socket:
    """A connection to the twistd in C{proc}, once it listens."""
    deadline = time.monotonic() + 20
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            assert time.monotonic() < deadline, "twistd did not start listening"
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.1)


def _twistdRefusal(
    *args: str, cwd: str, pythonpath: Sequence[str | Path] = ()
) -> tuple[int, str, str]:
    """Run a twistd that should refuse to start (or exit at once): status, stdout, stderr."""
    env = _environment(pythonpath)
    done = subprocess.run(
        [*TWISTD, "-n", "--pidfile=", "imapreferral", *args],
        cwd=cwd, env=env, capture_output=True, timeout=30,
    )  # fmt: skip
    return done.returncode, done.stdout.decode(), done.stderr.decode()


@pytest.fixture
def busyPort():
    """A loopback port something else listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield s.getsockname()[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("--max-connections abc", "--max-connections abc: not a whole number"),
        ("--listen tcp:99999", "--listen tcp:99999: port 99999 out of range (0-65535)"),
        (
            "--listen tcp:{free}:interface=127.0.0.1 --listen haproxy:tcp:{busy}:interface=127.0.0.1"
            " --haproxy-trusted-networks 127.0.0.1 --workers 2 --passdb passwd-file:{passwd}",
            "--listen haproxy:tcp:{busy}:interface=127.0.0.1: address already in use",
        ),
        (
            "--listen-tls tcp:{busy}:interface=127.0.0.1 --tls-cert {cert} --tls-key {key}",
            "--listen-tls tcp:{busy}:interface=127.0.0.1: address already in use",
        ),
        (
            "--listen tcp:{free}",
            "--listen tcp:{free} is reachable from other hosts: give --passdb (without it the "
            "bundled example users, password 'pass', are served, on loopback only)",
        ),
        (
            "--passdb sql:{sqlconf}",
            "{sqlconf}: connect = 'host=127.0.0.1 port=1 password=*** ***' is not usable: "
            'missing "=" after "***" in connection info string',
        ),
    ],
    ids=[
        "bad value",
        "port out of range",
        "haproxy port in use, workers",
        "TLS port in use",
        "example users on all addresses",
        "SQL password never shown",
    ],
)
def test_twistdStartupErrorIsOneLineOnStderr(tmp_path, busyPort, args, message):
    """No usage text, no traceback: one line naming the option, exit status 1."""
    from tlscerts import makeCertificate

    cert, key = makeCertificate(tmp_path)
    sqlconf = tmp_path / "sql.conf"
    sqlconf.write_text(
        "driver = pgsql\nconnect = host=127.0.0.1 port=1 password=my secret\n"
        "password_query = SELECT password FROM users WHERE userid = '%u'\n"
    )
    values = dict(
        free=_freePort(),
        busy=busyPort,
        cert=cert,
        key=key,
        sqlconf=sqlconf,
        passwd=tap.EXAMPLE_PASSWD,
    )
    args = args.format(**values).split()
    status, out, err = _twistdRefusal(*args, cwd=str(tmp_path))
    assert (status, out, err) == (1, "", f"imapreferral: {message.format(**values)}\n")


def _lowDescriptorLimit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))


def test_twistdFitsConnectionsToItsDescriptorsAndRefusesTheRestWithBye(tmp_path):
    """
    Under ulimit -n 128, 2000 connections cannot be held: 64 are (64
    descriptors stay for the rest), and the next client is told so instead
    of being dropped with an EMFILE in the log.
    """
    port = _freePort()
    proc = _twistd(
        "--listen", f"tcp:{port}:interface=127.0.0.1", cwd=str(tmp_path),
        preexec_fn=_lowDescriptorLimit,
    )  # fmt: skip
    held: list[socket.socket] = []
    try:
        held.append(_connectWhenListening(proc, port))
        held.extend(socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(63))
        for sock in held:
            assert sock.makefile("rb").readline().startswith(b"* OK ")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
            assert extra.makefile("rb").readline() == (
                b"* BYE [UNAVAILABLE] Maximum number of connections reached.\r\n"
            )
    finally:
        for sock in held:
            sock.close()
        proc.terminate()
        out = proc.communicate(timeout=20)[0].decode()
    assert (
        "--max-connections 2000 does not fit in 128 file descriptors (RLIMIT_NOFILE hard limit): "
        "serving at most 64 connections" in out
    )
    assert "EMFILE" not in out and "Traceback" not in out


def test_twistdServesReferralsAndLogsNoPassword(tmp_path):
    port = _freePort()
    proc = _twistd("--listen", f"tcp:{port}:interface=127.0.0.1", cwd=str(tmp_path))
    try:
        with _connectWhenListening(proc, port) as sock:
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
        f"login remote=127.0.0.1 local=127.0.0.1:{port} mech=PLAIN client=unknown: referred "
        'user="refnl" referral="imap://refnl;AUTH=PLAIN@imap2.example.com/"' in out
    )
    assert "pass" not in out.replace("passwd", "").replace("passdb", "")


def test_twistdRefusesAPasswdLineThatLostAColon(tmp_path):
    """Else the fields land in the uid column and the user logs in here, unreferred."""
    bad = tmp_path / "bad.passwd"
    bad.write_text("good:p\nshort:{PLAIN}pw:host=10.0.0.1 nologin\n")
    status, out, err = _twistdRefusal("--passdb", f"passwd-file:{bad}", cwd=str(tmp_path))
    assert (status, out) == (1, "")
    assert err.startswith(
        f"imapreferral: {bad}:2: uid 'host=10.0.0.1 nologin' holds extra fields: "
        "is a ':' missing? (user:password:uid:gid:gecos:home:shell:extra_fields)"
    )
    assert err.count("\n") == 1


def test_haproxyListenerWrapsWithOurProxyProtocol():
    options = tap.Options()
    options.parseOptions(
        [
            "--listen",
            "haproxy:tcp:0:interface=127.0.0.1",
            "--haproxy-trusted-networks",
            "127.0.0.1",
            "--passdb",
            f"passwd-file:{tap.EXAMPLE_PASSWD}",
        ]
    )
    service = tap.makeService(options)
    (listener,) = [s for s in service if hasattr(s, "endpoint")]
    assert type(listener.factory).__module__ == "imapreferral.haproxy"


@pytest.mark.parametrize(
    "argv",
    [
        ["twistd", "-n", "imapreferral", "--workers", "3", "--listen", "tcp:1"],
        ["twistd", "-n", "imapreferral", "--workers=3", "--listen", "tcp:1"],
    ],
)
def test_workerArguments(argv):
    from imapreferral.workers import workerArguments

    assert workerArguments(argv)[3:] == [
        "-n",
        "--pidfile=",
        "-n",
        "imapreferral",
        "--listen",
        "tcp:1",
    ]


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


def _daemonisedTwistd(tmp_path: Path, listen: str) -> subprocess.CompletedProcess:
    """Run twistd without C{-n} (it daemonises) on C{listen}; wait for the command."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent))
    return subprocess.run(
        [*TWISTD, "--pidfile=", "--logfile", str(tmp_path / "log"), "imapreferral",
         "--listen", listen],
        cwd=str(tmp_path), env=env, capture_output=True, timeout=20,
    )  # fmt: skip


def test_unixSocketInAMissingDirectoryIsOneLineOnStderrBeforeDaemonising(tmp_path):
    done = _daemonisedTwistd(tmp_path, f"unix:{tmp_path}/missing/imap.sock")
    assert done.returncode == 1
    assert done.stderr.decode() == (
        f"imapreferral: --listen unix:{tmp_path}/missing/imap.sock: no such file or directory\n"
    )


def test_daemonisedTwistdReportsAListenerThatCannotBind(tmp_path):
    """
    Without C{-n} twistd daemonises before the listeners bind; the command
    that started it must exit 1 naming the listener, not wait forever for a
    child that is gone (an existing path is left to Twisted by the probe, and
    a regular file there fails the bind).
    """
    (tmp_path / "imap.sock").write_text("")
    done = _daemonisedTwistd(tmp_path, f"unix:{tmp_path}/imap.sock")
    assert done.returncode == 1
    assert "imapreferral: --listen unix:" in done.stderr.decode()  # twistd cuts it at 100 bytes
    line = f"imapreferral: --listen unix:{tmp_path}/imap.sock: "
    # The parent exits as soon as the child reports; the child's log line may come just after.
    deadline = time.monotonic() + 10
    while line not in (tmp_path / "log").read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert line in (tmp_path / "log").read_text()


def test_selfAddressesAreProxySelfAndListenersWithWildcardsExpanded():
    config = tap.Options()
    config.parseOptions(
        ["--listen", "tcp:1143:interface=0.0.0.0", "--listen", "tcp:1144:interface=127.0.0.2",
         "--proxy-self", "[2001:db8::1]:143", "--passdb", "static:password=x"]
    )  # fmt: skip
    found = tap.selfAddresses(config)
    assert {("127.0.0.1", 1143), ("127.0.0.2", 1144), ("2001:db8::1", 143)} <= found
    assert ("127.0.0.1", 1144) not in found


def test_referralClientNamesRefuseUnknown(tmp_path):
    status, _, err = _twistdRefusal("--referral-client-names", "alpine,unknown", cwd=str(tmp_path))
    assert status == 1
    assert err.strip().splitlines()[-1].startswith("imapreferral: --referral-client-names: ")
