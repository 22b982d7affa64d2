"""
C{SIGTERM} on a real twistd: stop accepting, answer the login in flight,
C{* BYE Server shutting down.} before login, proxied sessions (to a real
Dovecot) go on for C{--shutdown-grace} seconds and are then closed, exit
status 0. The drain's rules in detail run in this process on a clock.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import pytest_twisted
from dovecotbackend import USERS, startDovecot
from test_proxy_server import isBackendOK
from test_tap import _refusal
from twistdprocess import Twistd
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from zope.interface import implementer

from imapreferral import tap
from imapreferral.interfaces import IPassdb
from imapreferral.proxy.connect import BackendConnector
from imapreferral.shutdown import Drain
from imapreferral.testing import MemoryPassdb, ServerHarness, waitForDelay

BYE = b"* BYE Server shutting down.\r\n"


@pytest.fixture(scope="module")
def dovecot():
    backend = startDovecot()
    yield backend
    backend.stop()


def _server(directory: Path, passwdLine: str, *options: str) -> Twistd:
    passwd = directory / "users.passwd"
    passwd.write_text(passwdLine + "\n")
    return Twistd(
        directory,
        "--listen", "tcp:{imap}:interface=127.0.0.1",
        "--passdb", f"passwd-file:{passwd}",
        *options,
    )  # fmt: skip


def _readUntil(f, tag: bytes) -> list[bytes]:
    lines = [f.readline()]
    while not lines[-1].startswith(tag + b" ") and lines[-1] and len(lines) < 40:
        lines.append(f.readline())
    return lines


def _refused(server: Twistd) -> bool:
    try:
        server.connect().close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture
def twistd(tmp_path):
    """Make a twistd (see L{_server}); killed after the test if still running."""
    started: list[Twistd] = []

    def make(passwdLine: str, *options: str) -> Twistd:
        started.append(_server(tmp_path, passwdLine, *options))
        return started[-1]

    yield make
    for server in started:
        server.stop()


def test_sigtermSaysByeBeforeLoginAndExitsZero(twistd):
    server = twistd("alice:{PLAIN}secret::::::")
    with server.connect() as sock:
        f = sock.makefile("rb")
        assert f.readline().startswith(b"* OK")
        server.terminate()
        assert f.readline() == BYE
        assert f.readline() == b""
    assert server.wait() == 0
    assert "shutting down: 1 connections open (0 proxied)" in server.log()


def test_sigtermAnswersTheLoginInFlightThenSaysBye(twistd):
    server = twistd("alice:{PLAIN}secret::::::", "--auth-failure-delay", "3")
    with server.connect() as sock:
        f = sock.makefile("rb")
        f.readline()
        sock.sendall(b"a LOGIN alice wrong\r\n")
        server.waitForLog('authentication failed user="alice"')  # answered after the delay
        server.terminate()
        server.waitForLog("shutting down:")
        assert _refused(server)
        assert f.readline() == b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
        assert f.readline() == BYE
        assert f.readline() == b""
    assert server.wait() == 0


def test_proxiedSessionWorksThroughTheGraceThenIsClosed(twistd, dovecot):
    grace = 3.0
    server = twistd(
        f"alice:{{PLAIN}}{USERS['alice']}::::::proxy host=127.0.0.1 port={dovecot.port}",
        "--shutdown-grace", str(grace),
    )  # fmt: skip
    with server.connect() as sock:
        f = sock.makefile("rb")
        f.readline()
        sock.sendall(f"a LOGIN alice {USERS['alice']}\r\nb SELECT INBOX\r\n".encode())
        assert isBackendOK(f.readline())
        assert _readUntil(f, b"b")[-1].startswith(b"b OK")
        signalled = time.monotonic()
        server.terminate()
        server.waitForLog("shutting down: 1 connections open (1 proxied)")
        assert _refused(server)
        sock.sendall(b"c FETCH 1 BODY[]\r\n")
        assert b"hello alice\r\n" in _readUntil(f, b"c")
        sock.settimeout(grace + 20)
        rest = f.read()  # until the front closes the session
        closed = time.monotonic() - signalled
    assert b"* BYE" not in rest  # relayed bytes are the backend's alone
    assert grace <= closed < grace + 15
    assert server.wait() == 0
    assert "shutdown grace over: closing 1 connections" in server.log()


def test_shutdownGraceZeroClosesProxiedSessionsAtOnce(twistd, dovecot):
    server = twistd(
        f"alice:{{PLAIN}}{USERS['alice']}::::::proxy host=127.0.0.1 port={dovecot.port}",
        "--shutdown-grace", "0",
    )  # fmt: skip
    with server.connect() as sock:
        f = sock.makefile("rb")
        f.readline()
        sock.sendall(f"a LOGIN alice {USERS['alice']}\r\n".encode())
        assert isBackendOK(f.readline())
        signalled = time.monotonic()
        server.terminate()
        sock.settimeout(20)
        assert f.read() == b""
        closed = time.monotonic() - signalled
    assert server.wait() == 0
    assert closed < 5  # the default grace would be 10 s
    assert "sessions have 0 s to end" in server.log()


# The drain on an in-process server and a clock


@pytest_twisted.ensureDeferred
async def test_loggedInSessionWorksThroughTheGraceThenGetsBye(server, client, clock):
    client.send(b"a LOGIN plain pass\r\n")
    assert (await client.line()).startswith(b"a OK")
    done = Drain(server.factory, clock, grace=5).start()
    client.send(b"b NOOP\r\n")
    assert (await client.line()).startswith(b"b OK")
    clock.advance(4.9)
    assert not done.called
    clock.advance(0.1)
    assert await client.line() == BYE.rstrip()
    assert await client.line() == b""
    await done


@pytest_twisted.ensureDeferred
async def test_loginInFlightOutlastingTheGraceIsAnsweredThenBye(server, client, clock):
    client.send(b"a LOGIN plain wrong\r\n")
    await waitForDelay(clock, 2)
    done = Drain(server.factory, clock, grace=0).start()
    assert client.pending() == 0
    clock.advance(2)
    assert await client.line() == b"a NO [AUTHENTICATIONFAILED] Authentication failed."
    assert await client.line() == BYE.rstrip()
    assert await client.line() == b""
    await done


@implementer(IPassdb)
class _Silent:
    """A passdb that never answers (a database hung beyond any timeout)."""

    def lookup(self, username: str, context: object) -> Deferred[None]:
        return Deferred()

    def canProvidePlaintext(self) -> bool:
        return False


@pytest_twisted.ensureDeferred
async def test_whatIsStillOpenAfterTheLastCallIsAborted(clock):
    harness = await ServerHarness.forPassdbs([_Silent()], clock=clock).start()
    try:
        client = await harness.connect()
        client.send(b"a LOGIN plain pass\r\n")
        await waitUntil(lambda: any(c._pendingLogin for c in harness.factory.connections))
        done = Drain(harness.factory, clock, grace=1, lastCall=30).start()
        clock.advance(1)
        clock.advance(29.9)
        assert not done.called
        clock.advance(0.1)
        assert await client.line() == b""
        await done
    finally:
        await harness.stop()


@pytest_twisted.ensureDeferred
async def test_proxyLoginAnsweredAfterTheGraceIsClosedRightAfterItsAnswer(dovecot, clock):
    passdb = MemoryPassdb.fromLines(
        {"alice": ("{PLAIN}" + USERS["alice"], f"proxy host=127.0.0.1 port={dovecot.port}")}
    )
    harness = ServerHarness.forPassdbs(
        [passdb], clock=clock, connector=BackendConnector(reactor, clock)
    )
    await harness.start()
    try:
        client = await harness.connect()
        client.send(f"a LOGIN alice {USERS['alice']}\r\n".encode())
        await waitUntil(lambda: any(c._proxy for c in harness.factory.connections))
        done = Drain(harness.factory, clock, grace=0).start()
        assert isBackendOK(await client.line())
        assert await client.line() == b""
        await done
    finally:
        await harness.stop()


async def waitUntil(condition, attempts: int = 400) -> None:
    """Bounded real-time polling for what the network, not the clock, decides."""
    for _ in range(attempts):
        if condition():
            return
        await task.deferLater(reactor, 0.005, lambda: None)
    raise AssertionError("condition not met in time")


def test_secondSigtermEndsTheGraceAtOnce(twistd):
    server = twistd("alice:{PLAIN}secret::::::", "--shutdown-grace", "600")
    with server.connect() as sock:
        f = sock.makefile("rb")
        f.readline()
        sock.sendall(b"a LOGIN alice secret\r\n")
        assert f.readline().startswith(b"a OK")  # a local session: it has the grace
        server.terminate()
        server.waitForLog("sessions have 600 s to end")
        server.terminate()
        assert f.readline() == BYE
        assert f.readline() == b""
    assert server.wait() == 0
    log = server.log()
    assert "shutdown: asked again, ending the grace now" in log
    assert "Traceback" not in log


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("soon", "imapreferral: --shutdown-grace soon: not a number"),
        ("-1", "imapreferral: --shutdown-grace -1: must be 0..3600 seconds"),
    ],
)
def test_badShutdownGraceStopsWithOneLine(value, message):
    assert _refusal(["--shutdown-grace", value]) == message


def test_shutdownGraceDefaultsToTenSeconds():
    options = tap.Options()
    options.parseOptions([])
    assert options["shutdown-grace"] == 10.0
    assert tap.makeService(options).grace == 10.0


# Review of issue 12


def test_sigtermClosesAPreLoginTLSConnectionWithoutWaitingForTheClient(twistd, tmp_path):
    """
    A TLS client that reads the BYE but does not answer TLS's close_notify
    (an idle client; one gone behind NAT) must not keep the server for the
    last call (grace + 30 s): a plain connection is closed at once.
    """
    import socket
    import ssl

    from tlscerts import makeCertificate

    cert, key = makeCertificate(tmp_path)
    passwd = tmp_path / "users.passwd"
    passwd.write_text("alice:{PLAIN}secret::::::\n")
    server = Twistd(
        tmp_path,
        "--listen", "tcp:{imap}:interface=127.0.0.1",
        "--listen-tls", "tcp:{imaps}:interface=127.0.0.1",
        "--tls-cert", str(cert), "--tls-key", str(key),
        "--passdb", f"passwd-file:{passwd}", "--shutdown-grace", "0",
        ports=("imap", "imaps"),
    )  # fmt: skip
    try:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        raw = socket.create_connection(("127.0.0.1", server.ports["imaps"]), timeout=10)
        with context.wrap_socket(raw) as sock:
            f = sock.makefile("rb")
            assert f.readline().startswith(b"* OK")
            started = time.monotonic()
            server.terminate()
            assert f.readline() == BYE
            assert server.wait(timeout=60) == 0
            assert time.monotonic() - started < 10, server.log()
    finally:
        server.stop()


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_sigtermToEveryWorkerAtOnceKeepsTheGrace(twistd):
    """
    systemd (KillMode=control-group, its default; the shipped units say mixed)
    and a terminal's Ctrl-C signal every process of the server at once; the
    first process then signals its workers again, which must not count as
    the operator asking twice: logged-in sessions keep their grace.
    """
    import os
    import signal

    server = twistd("alice:{PLAIN}secret::::::", "--workers", "2", "--shutdown-grace", "20")
    server.waitForLog("imapreferral serving", count=2)  # the worker's too
    sessions = _sessionsOnEveryProcess(server)  # some on the worker
    try:
        workers = _children(server.proc.pid)
        assert workers
        for pid in workers:  # systemd's signal reaches the workers first
            os.kill(pid, signal.SIGTERM)
        server.waitForLog("shutting down:")
        server.terminate()  # ... then the first process, which signals them again
        log = server.waitForLog("shutting down:", count=2)
        assert " 0 connections open" not in log, "no session on one of the processes"
        _stillServed(server, sessions)
    finally:
        for sock, _ in sessions:
            sock.close()
    assert server.wait(timeout=60) == 0


def _sockets(pid: int) -> int:
    """How many sockets process C{pid} has open."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += fd.readlink().name.startswith("socket:")
        except OSError:
            continue  # closed meanwhile
    return count


def _stillServed(server: Twistd, sessions: list) -> None:
    """A second into the grace, every logged-in session still answers."""
    time.sleep(1)
    for sock, f in sessions:
        sock.sendall(b"n NOOP\r\n")
        assert f.readline() == b"n OK NOOP No operation performed\r\n", server.log()


def _sessionsOnEveryProcess(server: Twistd, count: int = 10, most: int = 100) -> list:
    """
    At least C{count} logged-in sessions, and at least one on each process:
    which process accepts is the kernel's choice, so more are opened (up to
    C{most}) until each has one.
    """
    pids = [server.proc.pid, *_children(server.proc.pid)]
    assert len(pids) > 1, "no worker"
    before = {pid: _sockets(pid) for pid in pids}
    sessions = []
    while len(sessions) < count or any(_sockets(pid) <= before[pid] for pid in pids):
        assert len(sessions) < most, "the same process accepted every connection"
        sock = server.connect()
        f = sock.makefile("rb")
        f.readline()
        sock.sendall(b"a LOGIN alice secret\r\n")
        assert f.readline().startswith(b"a OK ")
        sessions.append((sock, f))
    return sessions


def test_secondSigtermToTheFirstProcessEndsEveryWorkersGrace(twistd):
    """
    The first process asks its workers to drain with a signal that is never
    "hurry"; the operator's second SIGTERM is passed on as one.
    """
    server = twistd("alice:{PLAIN}secret::::::", "--workers", "2", "--shutdown-grace", "600")
    server.waitForLog("imapreferral serving", count=2)
    sessions = _sessionsOnEveryProcess(server)
    try:
        server.terminate()
        log = server.waitForLog("sessions have 600 s to end", count=2)
        assert " 0 connections open" not in log, "no session on one of the processes"
        server.terminate()
        for _, f in sessions:
            assert f.readline() == BYE
            assert f.readline() == b""
    finally:
        for sock, _ in sessions:
            sock.close()
    assert server.wait(timeout=30) == 0
    assert server.log().count("shutdown: asked again, ending the grace now") == 2
    assert "Traceback" not in server.log()


def test_ctrlCInATerminalKeepsTheGraceOfEveryWorker(tmp_path):
    """
    A terminal's Ctrl-C signals its whole foreground process group: the
    workers, in their own group, hear it from the first process alone, once.
    """
    import os
    import signal

    passwd = tmp_path / "users.passwd"
    passwd.write_text("alice:{PLAIN}secret::::::\n")
    server = Twistd(
        tmp_path,
        "--listen", "tcp:{imap}:interface=127.0.0.1", "--passdb", f"passwd-file:{passwd}",
        "--workers", "2", "--shutdown-grace", "20",
        newSession=True,
    )  # fmt: skip
    try:
        server.waitForLog("imapreferral serving", count=2)
        sessions = _sessionsOnEveryProcess(server)
        try:
            os.killpg(server.proc.pid, signal.SIGINT)
            log = server.waitForLog("sessions have 20 s to end", count=2)
            assert " 0 connections open" not in log, "no session on one of the processes"
            _stillServed(server, sessions)
        finally:
            for sock, _ in sessions:
                sock.close()
        assert server.wait(timeout=60) == 0
        assert "asked again" not in server.log()
    finally:
        server.stop()
