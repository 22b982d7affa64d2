"""
The C{imapreferral} console script, run as a subprocess: C{auth test}
against passwd-file, SQLite and PostgreSQL passdbs (and compared with what
the running server answers), C{auth lookup}, C{pw} and C{config check}.
"""

from __future__ import annotations

import os
import pty
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlbackends import writeConfig
from test_tap import _connectWhenListening, _freePort, _twistd, _twistdRefusal
from tlscerts import makeCertificate

from imapreferral import tap

CLI = Path(sys.executable).with_name("imapreferral")
ROOT = Path(__file__).parent.parent
SECRET = "Sesame-7a"

USERS = f"""\
alice:{{PLAIN}}{SECRET}::::::host=imap2.example.com nologin
bob:{{PLAIN}}{SECRET}
carol:{{PLAIN}}{SECRET}::::::host=imap2.example.com port=1143
dave:{{PLAIN}}{SECRET}::::::nologin reason=Moved
eve:{{PLAIN}}{SECRET}::::::proxy host=127.0.0.1 port=10144 destuser=eve2 pass=backend-pw
"""


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed console script on this source tree."""
    assert CLI.exists(), f"{CLI} missing: pip install -e . installs the console script"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [str(CLI), *args], capture_output=True, text=True, timeout=60, env=env, cwd=cwd
    )


@pytest.fixture(scope="module")
def passwd(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "users.passwd"
    path.write_text(USERS)
    return path


def _line(out: str, prefix: str) -> str:
    """The one line of C{out} starting with C{prefix}, without it."""
    found = [line[len(prefix) :] for line in out.splitlines() if line.startswith(prefix)]
    assert len(found) == 1, out
    return found[0]


# auth test


def test_authTestShowsFieldsPassdbAndReplyWithoutThePassword(passwd):
    done = cli("auth", "test", "--passdb", f"passwd-file:{passwd}", "alice", SECRET)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"passdb <PasswdFilePassdb {passwd}>: found",
        "  password={PLAIN}*** host=imap2.example.com nologin",
        f"decided by: <PasswdFilePassdb {passwd}>",
        "outcome: referred to imap2.example.com",
        "reply: a NO [REFERRAL imap://alice;AUTH=PLAIN@imap2.example.com/] "
        "Try this server instead.",
    ]
    assert SECRET not in done.stdout + done.stderr


@pytest.fixture(scope="module")
def runningServer(passwd, tmp_path_factory):
    """The real server (twistd) on the same passdb, failures answered at once."""
    port = _freePort()
    proc = _twistd(
        "--listen", f"tcp:{port}:interface=127.0.0.1", "--passdb", f"passwd-file:{passwd}",
        "--auth-failure-delay", "0", "--auth-penalty-cap", "0",
        cwd=str(tmp_path_factory.mktemp("server")),
    )  # fmt: skip
    try:
        _connectWhenListening(proc, port).close()
        yield port
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


def _serverReply(port: int, user: str, password: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        f = sock.makefile("rb")
        f.readline()
        sock.sendall(f"a LOGIN {user} {password}\r\n".encode())
        return f.readline().decode().rstrip("\r\n")


@pytest.mark.parametrize(
    ("user", "password", "status"),
    [
        ("bob", SECRET, 0),
        ("alice", SECRET, 0),
        ("carol", SECRET, 0),
        ("dave", SECRET, 1),
        ("bob", "wrong", 1),
        ("nobody", SECRET, 1),
        ("ALICE", SECRET, 0),
    ],
    ids=["logs in", "referred", "suggested", "disabled", "wrong password", "unknown", "case"],
)
def test_authTestReplyIsTheRunningServersReply(runningServer, passwd, user, password, status):
    done = cli("auth", "test", "--passdb", f"passwd-file:{passwd}", user, password)
    assert done.returncode == status, done.stdout + done.stderr
    assert _line(done.stdout, "reply: ") == _serverReply(runningServer, user, password)


def test_authTestProxyShowsTheBackendDestination(passwd):
    done = cli("auth", "test", "--passdb", f"passwd-file:{passwd}", "eve", SECRET)
    assert done.returncode == 0, done.stderr
    assert _line(done.stdout, "outcome: ") == "proxied to 127.0.0.1:10144"
    assert _line(done.stdout, "proxy: ") == "127.0.0.1:10144 as eve2, TLS plain, timeout 30 s"
    assert "pass=***" in done.stdout and "backend-pw" not in done.stdout


@pytest.mark.parametrize(
    ("where", "outcome"),
    [
        ([], "proxied to 127.0.0.1:10143"),
        (["--local-ip", "127.0.0.1", "--local-port", "10143"], "logged in here"),
    ],
    ids=["elsewhere", "connected to the host named"],
)
def test_authTestProxyMaybeSeesWhereTheLoginArrives(where, outcome):
    """proxy_maybe to the address the client connected to: a login here."""
    fields = "static:password=pw proxy_maybe host=127.0.0.1 port=10143"
    done = cli("auth", "test", "--passdb", fields, *where, "frank", "pw")
    assert done.returncode == 0, done.stderr
    assert _line(done.stdout, "outcome: ") == outcome


def test_authTestRefusesABadAddress():
    done = cli("auth", "test", "--remote-ip", "nope", "bob", SECRET)
    assert (done.returncode, done.stderr) == (
        64,
        "imapreferral: --remote-ip nope: not an IP address\n",
    )


def test_authTestSaysAGreetingReferralComesFirst(passwd):
    done = cli("auth", "test", "--passdb", f"passwd-file:{passwd}",
               "--greeting-referral", "imap://new.example.com/", "bob", SECRET)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert _line(done.stdout, "but: ") == (
        "--greeting-referral sends every client to imap://new.example.com/ "
        "(* BYE [REFERRAL ...]) before it can log in"
    )


def test_authTestUnreachableDatabaseIsATemporaryFailure(tmp_path):
    conf = writeConfig(
        str(tmp_path / "pg.conf"), "pgsql", f"host=127.0.0.1 port={_freePort()} dbname=x"
    )
    done = cli("auth", "test", "--passdb", f"sql:{conf}", "bob", SECRET)
    assert done.returncode == 2, done.stdout + done.stderr
    assert _line(done.stdout, "reply: ") == "a NO [UNAVAILABLE] Temporary authentication failure."
    assert "database unreachable" in done.stderr


def test_authTestThroughSQLite():
    """The bundled example SQLite passdb, as the server's default."""
    done = cli("auth", "test", "sqlref", "pass")
    assert done.returncode == 0, done.stderr
    assert _line(done.stdout, "decided by: ").startswith("<SQLPassdb sqlite ")
    assert _line(done.stdout, "reply: ") == (
        "a NO [REFERRAL imap://sqlref;AUTH=PLAIN@imap3.example.com/] Try this server instead."
    )


def test_authTestThroughPostgreSQL(postgres, tmp_path):
    conf = writeConfig(str(tmp_path / "pg.conf"), "pgsql", postgres.conninfo)
    done = cli("auth", "test", "--passdb", f"sql:{conf}", "refport", "pass")
    assert done.returncode == 0, done.stderr
    assert _line(done.stdout, "decided by: ") == f"<SQLPassdb pgsql {conf}>"
    assert _line(done.stdout, "reply: ") == (
        "a NO [REFERRAL imap://refport;AUTH=PLAIN@imap2.example.com:1143/] "
        "Try this server instead."
    )


def test_authTestBadOptionIsTheServersOneLineError(passwd):
    done = cli("auth", "test", "--max-connections", "abc", "bob", SECRET)
    assert (done.returncode, done.stdout, done.stderr) == (
        64,
        "",
        "imapreferral: --max-connections abc: not a whole number\n",
    )


def _readUntil(fd: int, wanted: bytes | None, seconds: float = 20) -> bytes:
    """What the terminal shows until C{wanted} (L{None}: until the child ends)."""
    seen = b""
    deadline = time.monotonic() + seconds
    while wanted is None or wanted not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, seen
        if select.select([fd], [], [], remaining)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    return seen


def test_authTestAsksForThePasswordWithoutEcho(passwd):
    """No PASSWORD: asked for on the terminal (getpass), not echoed."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI on the pty as its controlling terminal
        try:
            os.environ["PYTHONPATH"] = str(ROOT)
            os.execv(
                str(CLI), [str(CLI), "auth", "test", "--passdb", f"passwd-file:{passwd}", "bob"]
            )
        finally:
            os._exit(127)
    try:
        assert _readUntil(fd, b"Password: ").endswith(b"Password: ")
        os.write(fd, SECRET.encode() + b"\n")
        rest = _readUntil(fd, None)
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    assert SECRET.encode() not in rest
    assert b"reply: a OK [CAPABILITY " in rest
    assert os.waitstatus_to_exitcode(status) == 0


def test_ctrlCAtThePasswordPromptIsOneLine(passwd):
    """Ctrl-C at the prompt: one line and exit status 130, not a traceback."""
    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.environ["PYTHONPATH"] = str(ROOT)
            os.execv(
                str(CLI), [str(CLI), "auth", "test", "--passdb", f"passwd-file:{passwd}", "bob"]
            )
        finally:
            os._exit(127)
    try:
        assert _readUntil(fd, b"Password: ").endswith(b"Password: ")
        os.write(fd, b"\x03")  # the terminal's interrupt character: SIGINT
        rest = _readUntil(fd, None)
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    assert b"Traceback" not in rest
    assert rest.strip().splitlines()[-1] == b"imapreferral auth test: interrupted"
    assert os.waitstatus_to_exitcode(status) == 130


def test_pwReadsAPasswordFromAScriptOnce():
    """No terminal: the password is a line of stdin, asked once (nobody can mistype it)."""
    done = subprocess.run(
        [str(CLI), "pw", "-s", "SHA512-CRYPT"], input=SECRET + "\n", capture_output=True,
        text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)),
        start_new_session=True,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert cli("pw", "-t", done.stdout.strip(), "-p", SECRET).returncode == 0


# auth lookup


def test_authLookupShowsEveryPassdbsFields(passwd):
    done = cli("auth", "lookup", "--passdb", f"passwd-file:{passwd}", "--passdb",
               "static:nopassword host=imap9.example.com", "Carol")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "user: carol",
        f"passdb <PasswdFilePassdb {passwd}>: found",
        "  password={PLAIN}*** host=imap2.example.com port=1143",
        "passdb <StaticPassdb host='imap9.example.com'>: found",
        "  host=imap9.example.com nopassword",
    ]


def test_authLookupUnknownUserExits1(passwd):
    done = cli("auth", "lookup", "--passdb", f"passwd-file:{passwd}", "nobody")
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines()[1] == f"passdb <PasswdFilePassdb {passwd}>: user unknown"


def test_authLookupThroughPostgreSQL(postgres, tmp_path):
    conf = writeConfig(str(tmp_path / "pg.conf"), "pgsql", postgres.conninfo)
    done = cli("auth", "lookup", "--passdb", f"sql:{conf}", "refdest")
    assert done.returncode == 0, done.stderr
    assert _line(done.stdout, "  ") == (
        "password={PLAIN}*** host=imap2.example.com destuser=other@example.com nologin"
    )


# pw


def test_pwMakesBcryptByDefaultAndChecksIt():
    made = cli("pw", "-p", SECRET)
    assert made.returncode == 0, made.stderr
    stored = made.stdout.strip()
    assert stored.startswith("{BLF-CRYPT}$2b$10$")
    assert cli("pw", "-t", stored, "-p", SECRET).returncode == 0
    wrong = cli("pw", "-t", stored, "-p", "x" + SECRET)
    assert (wrong.returncode, wrong.stdout) == (1, f"{stored} (does not match)\n")


def test_pwListsEverySchemeWeVerify():
    from imapreferral import passwords

    done = cli("pw", "-l")
    assert set(done.stdout.split()) == set(passwords._SCHEMES)


def test_pwWarnsAboutAWeakScheme():
    done = cli("pw", "-s", "sha256", "-p", SECRET)
    assert done.stdout.startswith("{SHA256}")
    assert "{SHA256} is quick to guess from" in done.stderr


def test_pwRefusesAnUnknownScheme():
    done = cli("pw", "-s", "NOSUCH", "-p", SECRET)
    assert done.returncode == 64 and done.stdout == ""
    assert done.stderr.startswith("imapreferral pw: -s NOSUCH: unknown scheme (use one of PLAIN,")


# config check


def test_configCheckPrintsWhatWouldBeServed(tmp_path, passwd):
    cert, key = makeCertificate(tmp_path)
    port = _freePort()
    done = cli(
        "config", "check", "--listen", f"tcp:{port}:interface=127.0.0.1",
        "--listen-tls", f"tcp:{port + 1}:interface=127.0.0.1",
        "--tls-cert", str(cert), "--tls-key", str(key), "--passdb", f"passwd-file:{passwd}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:3] == [
        "imapreferral 0.1.0: configuration OK",
        f"listener: listen tcp:{port}:interface=127.0.0.1 (plain, STARTTLS)",
        f"listener: listen-tls tcp:{port + 1}:interface=127.0.0.1 (implicit TLS)",
    ]
    assert lines[3].startswith(f"TLS certificate: {cert}: localhost, names localhost")
    assert lines[4:7] == [
        f"passdb 1: <PasswdFilePassdb {passwd}>",
        "mechanisms: PLAIN LOGIN CRAM-MD5",
        "plaintext logins: over TLS or from trusted networks 127.0.0.0/8 ::1/128",
    ]


def test_configCheckBindsNothingSoTheServerMayBeRunning(passwd):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        done = cli("config", "check", "--listen", f"tcp:{port}:interface=127.0.0.1")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "args",
    [
        "--max-connections abc",
        "--passdb passwd-file:{bad}",
        "--tls-cert {tmp}/no.crt --tls-key {tmp}/no.key",
        "--passdb sql:{sqlconf}",
        "--greeting-referral imap://x",
    ],
    ids=["bad value", "passwd line lost a colon", "TLS file missing", "SQL config", "URL"],
)
def test_configCheckErrorIsTheStartupError(tmp_path, args):
    """The same line on stderr and exit status 1 as twistd's refusal."""
    bad = tmp_path / "bad.passwd"
    bad.write_text("good:p\nshort:{PLAIN}pw:host=10.0.0.1 nologin\n")
    sqlconf = tmp_path / "sql.conf"
    sqlconf.write_text("driver = pgsql\nconnect = host=127.0.0.1 port=1 password=my secret\n")
    argv = args.format(bad=bad, tmp=tmp_path, sqlconf=sqlconf).split()
    status, out, err = _twistdRefusal(*argv, cwd=str(tmp_path))
    assert (status, out) == (1, "") and err.startswith("imapreferral: "), err
    done = cli("config", "check", *argv)
    assert (done.returncode, done.stdout, done.stderr) == (1, "", err)


def test_unknownCommandShowsTheCommands():
    done = cli("frobnicate")
    assert done.returncode == 64
    assert done.stderr.startswith("imapreferral: unknown command frobnicate\n\nUsage:")
    assert "auth test [server options] USER [PASSWORD]" in done.stderr


def test_defaultPassdbsAreTheServers():
    """Without --passdb, the bundled examples, as for twistd imapreferral."""
    done = cli("config", "check")
    assert [line for line in done.stdout.splitlines() if line.startswith("passdb ")] == [
        f"passdb 1: <PasswdFilePassdb {tap.EXAMPLE_PASSWD}>",
        f"passdb 2: <SQLPassdb sqlite {tap.EXAMPLE_SQL}>",
    ]


# Review of issue 12


def test_authTestReplyIsTheServersWhenPlaintextLoginsAreRefused(passwd, tmp_path):
    """
    A client outside --trusted-networks without TLS gets PRIVACYREQUIRED
    from the server; auth test, told the same address and options, must not
    promise it a login.
    """
    port = _freePort()
    options = ["--passdb", f"passwd-file:{passwd}", "--trusted-networks", "10.0.0.0/8"]
    proc = _twistd(
        "--listen", f"tcp:{port}:interface=127.0.0.1", *options,
        "--auth-failure-delay", "0", cwd=str(tmp_path),
    )  # fmt: skip
    try:
        _connectWhenListening(proc, port).close()
        served = _serverReply(port, "bob", SECRET)
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
    done = cli("auth", "test", *options, "--remote-ip", "127.0.0.1", "bob", SECRET)
    assert _line(done.stdout, "reply: ") == served, done.stdout


def test_authTestNamesThePassdbThatAnsweredBesideAnAuthChecker(passwd):
    """
    With an --auth checker beside --passdb (a CheckerChain), the passdb's
    fields and that it decided are still shown, not "no passdb was asked".
    """
    done = cli("auth", "test", "--passdb", f"passwd-file:{passwd}",
               "--auth", "memory:zed:pw", "alice", SECRET)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"passdb <PasswdFilePassdb {passwd}>: found" in done.stdout.splitlines()
    assert _line(done.stdout, "decided by: ") == f"<PasswdFilePassdb {passwd}>"


def test_authLookupDoesNotSkipAnAuthCheckerSilently():
    """
    auth lookup of a user only an --auth checker knows: it says the checker
    was not asked (or asks it), instead of "user unknown" from nothing.
    """
    done = cli("auth", "lookup", "--auth", "memory:zed:pw", "zed")
    assert "memory" in done.stdout, done.stdout + done.stderr


def test_configCheckTakesTheSocketActivatedUnitsListeners(passwd):
    """
    The unit's comment and the README say to check its options with config
    check before starting it; run from a shell there are no systemd sockets,
    and config check binds (and adopts) nothing, so that is no error.
    """
    done = cli("config", "check", "--listen", "systemd:domain=INET:index=0",
               "--listen", "systemd:domain=INET6:index=1",
               "--passdb", f"passwd-file:{passwd}")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("imapreferral ")


def test_configCheckSaysAnExpiredCertificateHasExpired(tmp_path, passwd):
    """
    "configuration OK ... expires <yesterday>" hides what every client will
    refuse: a renewal hook that installed the old file goes unnoticed.
    """
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old.example.com")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=90))
        .not_valid_after(now - datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    (tmp_path / "old.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "old.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    done = cli("config", "check", "--passdb", f"passwd-file:{passwd}",
               "--tls-cert", str(tmp_path / "old.crt"), "--tls-key", str(tmp_path / "old.key"))  # fmt: skip
    said = (done.stdout + done.stderr).replace(str(tmp_path), "TMP")  # its name has "Expired"
    assert "expired" in said.lower(), done.stdout


@pytest.mark.parametrize("command", [["auth", "test", "bob"], ["pw"]], ids=["auth test", "pw"])
def test_noPasswordToReadIsOneLineNotATraceback(command):
    """
    Run from a script or cron (no terminal, stdin at its end), the prompt
    gets end-of-file: a one-line error and a non-zero status, as for any
    bad input, not Python's traceback.
    """
    done = subprocess.run(
        [str(CLI), *command], stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)), start_new_session=True,
    )  # fmt: skip
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr


def test_authTestInAutoModeSaysWhatAClientFollowingReferralsGets(passwd):
    """
    With --referral-mode auto the answer depends on the client: auth test
    shows only the proxying an unknown client gets, not the referral that
    Alpine or another referral-following client would be sent.
    """
    done = cli("auth", "test", "--passdb", f"passwd-file:{passwd}",
               "--referral-mode", "auto", "alice", SECRET)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "NO [REFERRAL imap://alice;AUTH=PLAIN@imap2.example.com/]" in done.stdout, done.stdout


def test_configCheckErrorNeverShowsTheLocalBackendsPassword():
    """
    A bad --local-backend is echoed whole in the one-line error, master
    password included: in the journal when systemd starts the server. A bad
    --passdb static:... shows password=*** already.
    """
    done = cli("config", "check",
               "--local-backend", "host=127.0.0.1 master=admin pass=MasterSecret9 port=x")  # fmt: skip
    assert done.returncode == 1
    assert "port='x'" in done.stderr
    assert "MasterSecret9" not in done.stderr, done.stderr


def test_configCheckListsAuthCheckersInTheOrderTheyAreAsked(passwd):
    """
    --auth checkers are consulted in order with --passdb; config check
    lists only the passdbs, so the checker asked first does not appear.
    """
    done = cli("config", "check", "--auth", "memory:zed:Secret7",
               "--passdb", f"passwd-file:{passwd}")  # fmt: skip
    assert done.returncode == 0, done.stderr
    sources = [line for line in done.stdout.splitlines() if "memory" in line or "Passwd" in line]
    assert len(sources) == 2 and "memory" in sources[0], done.stdout
    assert "Secret7" not in done.stdout


def test_authTestSeesAProxyToItselfAsTheServerDoes():
    """
    A proxy destination that is one of our own listeners is refused by the
    server (NO [SERVERBUG], "proxying loops to itself") from its options
    alone, without contacting anything; auth test says "proxied", exit 0.
    """
    port = _freePort()
    done = cli("auth", "test", "--listen", f"tcp:{port}:interface=127.0.0.1",
               "--passdb", f"static:password=pw proxy host=127.0.0.1 port={port}",
               "bob", "pw")  # fmt: skip
    assert done.returncode != 0, done.stdout
    assert _line(done.stdout, "reply: ").startswith("a NO [SERVERBUG]"), done.stdout


# Fixes for issue 12's review: the cases the reviewer's tests leave open


def test_authTestOverTLSMayLogInFromAnywhere(passwd, tmp_path):
    """--tls: the client connected over TLS, so plaintext is allowed outside --trusted-networks."""
    cert, key = makeCertificate(tmp_path)
    done = cli("auth", "test", "--passdb", f"passwd-file:{passwd}", "--tls-cert", str(cert),
               "--tls-key", str(key), "--remote-ip", "192.0.2.7", "--tls", "bob", SECRET)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert _line(done.stdout, "reply: ").startswith("a OK [CAPABILITY ")


def test_authTestRefusesTLSTheServerDoesNotOffer(passwd):
    done = cli("auth", "test", "--passdb", f"passwd-file:{passwd}", "--tls", "bob", SECRET)
    assert (done.returncode, done.stdout, done.stderr) == (
        64,
        "",
        "imapreferral: --tls: the server offers no TLS without --tls-cert\n",
    )


def test_authTestNamesTheAuthCheckerThatDecided(passwd):
    done = cli("auth", "test", "--passdb", f"passwd-file:{passwd}",
               "--auth", "memory:zed:pw", "zed", "pw")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:3] == [
        f"passdb <PasswdFilePassdb {passwd}>: user unknown",
        "checker <--auth memory: InMemoryUsernamePasswordDatabaseDontUse>: password accepted",
        "decided by: <--auth memory: InMemoryUsernamePasswordDatabaseDontUse>",
    ]


def test_authTestSeesAProxyToItselfByName():
    """A destination named, not numbered: its addresses are ours all the same."""
    port = _freePort()
    done = cli("auth", "test", "--listen", f"tcp:{port}:interface=127.0.0.1",
               "--passdb", f"static:password=pw proxy host=localhost port={port}",
               "bob", "pw")  # fmt: skip
    assert done.returncode == 2, done.stdout
    assert _line(done.stdout, "reply: ") == "a NO [SERVERBUG] Account is temporarily unavailable."


def test_authTestTakesTheSocketActivatedUnitsOptionsAndBindsNothing(passwd):
    """The unit's options (systemd: listeners, --metrics on a port the server holds)."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        done = cli("auth", "test", "--listen", "systemd:domain=INET:index=0",
                   "--metrics", f"tcp:{port}:interface=127.0.0.1",
                   "--passdb", f"passwd-file:{passwd}", "bob", SECRET)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert _line(done.stdout, "reply: ").startswith("a OK [CAPABILITY ")
