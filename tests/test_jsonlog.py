"""
C{--log-format json} and session ids, through a real twistd writing its log
file while real clients log in (hostile user names included).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile import HOSTILE_NAMES
from lineclient import LineClient
from twisted.logger import LogLevel

from imapreferral.jsonlog import KEYS, jsonLine

REPO = Path(__file__).parent.parent
USERS = "alice:{PLAIN}secret\nrefnl:{PLAIN}pass::::::host=imap2.example.com nologin\n"


def _freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _twistd(directory: Path, port: int, *options: str) -> subprocess.Popen:
    users = directory / "users.passwd"
    users.write_text(USERS)
    return subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
         "-n", "--pidfile=", "--logfile", str(directory / "imapreferral.log"), "imapreferral",
         "--listen", f"tcp:{port}:interface=127.0.0.1", "--passdb", f"passwd-file:{users}",
         "--auth-failure-delay", "0", "--auth-penalty-cap", "0", "--max-auth-failures", "100",
         *options],
        cwd=directory, env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


@contextlib.contextmanager
def _running(
    directory: Path, *options: str, port: int | None = None, processes: int = 1
) -> Iterator[tuple[int, subprocess.Popen]]:
    """
    twistd on C{port} (one from the OS if L{None}), listening in every one
    of its C{processes}, stopped after: the port and the process.
    """
    port = _freePort() if port is None else port
    proc = _twistd(directory, port, *options)
    log = directory / "imapreferral.log"
    try:
        deadline = time.monotonic() + 30
        # Wait for our own server even with one process: the port came from
        # the OS and was released, so another program may hold it by now.
        while not log.exists() or log.read_text().count("imapreferral serving") < processes:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        yield port, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _logLines(directory: Path) -> list[str]:
    return (directory / "imapreferral.log").read_text(encoding="utf-8").splitlines()


def _aliceLogsIn(port: int, times: int) -> None:
    """C{times} sessions, each its own connection (so every worker gets some)."""
    for _ in range(times):
        client = LineClient(port, wait=20)
        assert client.command(b"z LOGIN alice secret").startswith(b"z OK ")
        client.close()


def _run(directory: Path, *options: str) -> list[str]:
    """Start twistd, talk to it over two connections, stop it: its log lines."""
    with _running(directory, *options) as (port, _):
        first = LineClient(port, wait=20)
        assert first.command(b'i ID ("name" "json-test")').startswith(b"* ID ")
        first.line()
        for i, name in enumerate(HOSTILE_NAMES.values()):
            assert b" NO [AUTHENTICATIONFAILED]" in first.login(b"h%d" % i, name, b"wrong")
        assert first.command(b"z LOGIN alice secret").startswith(b"z OK ")
        first.close()
        second = LineClient(port)
        assert second.command(b"r LOGIN refnl pass").startswith(b"r NO [REFERRAL ")
        second.close()
    return _logLines(directory)


@pytest.fixture(scope="module")
def jsonLog(tmp_path_factory) -> list[dict]:
    lines = _run(tmp_path_factory.mktemp("jsonlog"), "--log-format", "json")
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def textLog(tmp_path_factory) -> list[str]:
    return _run(tmp_path_factory.mktemp("textlog"))


def _logins(log: list[dict]) -> list[dict]:
    return [line for line in log if line["event"] == "login"]


def test_everyJSONLineHasTheFixedKeysInOrder(jsonLog):
    assert jsonLog
    assert {tuple(line) for line in jsonLog} == {KEYS}


def test_jsonHasOneLoginLinePerAuthentication(jsonLog):
    assert [line["outcome"] for line in _logins(jsonLog)] == [
        *["authentication failed"] * len(HOSTILE_NAMES),
        "logged in",
        "referred",
    ]


def test_jsonUserIsTheNameTheClientSent(jsonLog):
    sent = [name.decode("utf-8", "replace") for name in HOSTILE_NAMES.values()]
    assert [line["user"] for line in _logins(jsonLog)[: len(sent)]] == sent


def test_jsonLoginLineCarriesWhereHowAndHowLong(jsonLog):
    referred = _logins(jsonLog)[-1]
    assert referred["remote"] == "127.0.0.1"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", referred["local"])
    assert referred["mechanism"] == "PLAIN"
    assert referred["tls"] is False
    assert referred["client"] == "unknown"
    assert referred["referral"] == "imap://refnl;AUTH=PLAIN@imap2.example.com/"
    assert referred["level"] == "info"
    assert isinstance(referred["duration_ms"], float) and referred["duration_ms"] >= 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", referred["time"])


def test_jsonLinesShareTheirConnectionsSessionID(jsonLog):
    (clientID,) = [line for line in jsonLog if line["event"] == "client ID"]
    logins = _logins(jsonLog)
    first = {line["session"] for line in logins[:-1]}
    assert first == {clientID["session"]}
    assert logins[-1]["session"] not in first
    assert re.fullmatch(r"[A-Za-z0-9+/]{12}", logins[-1]["session"])


def test_textLinesCarryTheSessionIDInTheirSystem(textLog):
    systems = [
        re.match(r"\S+ \[([^\]]*)\] (login|client ID) ", line)
        for line in textLog
        if " login remote=" in line or " client ID remote=" in line
    ]
    assert systems and all(systems)
    ids = [match.group(1).split(" ")[-1] for match in systems]
    assert len(set(ids[:-1])) == 1 and ids[-1] != ids[0]
    assert systems[0].group(1) == f"imapreferral.imap.idcommand#info {ids[0]}"


def test_jsonLineOfAnEventWithoutOurFieldsHasItsTextAndNulls():
    line = json.loads(
        jsonLine(
            {"log_format": "hello {who}", "who": "world", "log_level": LogLevel.warn,
             "log_time": 0.0, "log_namespace": "somewhere"}
        )
    )  # fmt: skip
    assert line["text"] == "hello world"
    assert line["event"] == "message"
    assert line["level"] == "warn"
    assert line["namespace"] == "somewhere"
    assert line["user"] is None and line["session"] is None


def test_jsonLineIsOneLineWhateverTheValues():
    nasty = 'a\nb\r\u2028\u2029\u202e\x00"}{'
    text = jsonLine({"log_format": "{user}", "user": nasty, "event": "login", "log_time": 1.0})
    assert text.count("\n") == 1 and text.endswith("\n")
    assert text.isascii()
    assert json.loads(text)["user"] == nasty


def _startupError(tmp_path: Path, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
         "-n", "--pidfile=", *args],
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    return proc.stderr


def test_unknownLogFormatIsOneLineAtStartUp(tmp_path):
    err = _startupError(tmp_path, "imapreferral", "--log-format", "xml")
    assert "--log-format" in err and "'text' or 'json'" in err
    assert "Traceback" not in err


def test_jsonWithSyslogIsRefusedAtStartUp(tmp_path):
    err = _startupError(tmp_path, "--syslog", "imapreferral", "--log-format", "json")
    assert "not --syslog" in err
    assert "Traceback" not in err


# Review of issue 12


@pytest.fixture(scope="module")
def loopAndProxyLog(tmp_path_factory) -> list[dict]:
    """
    A JSON log with a referral loop (a user referred to this very server)
    and a proxy login to a backend that is down.
    """
    directory = tmp_path_factory.mktemp("jsonloop")
    port, closed = _freePort(), _freePort()
    extra = directory / "more.passwd"
    extra.write_text(
        f"loopy:{{PLAIN}}pass::::::host=127.0.0.1 port={port} nologin\n"
        f"px:{{PLAIN}}pass::::::proxy host=127.0.0.1 port={closed} destuser=backenduser\n"
    )
    options = ("--passdb", f"passwd-file:{extra}", "--log-format", "json",
               "--proxy-max-reconnects", "0")  # fmt: skip
    with _running(directory, *options, port=port):
        client = LineClient(port, wait=20)
        assert client.command(b"l LOGIN loopy pass").startswith(b"l OK ")
        client.close()
        client = LineClient(port)
        assert client.command(b"p LOGIN px pass").startswith(b"p NO [UNAVAILABLE]")
        client.close()
    return [json.loads(line) for line in _logLines(directory)]


def test_referralLoopWarningCarriesItsConnectionsSessionID(loopAndProxyLog):
    (login,) = [line for line in _logins(loopAndProxyLog) if line["user"] == "loopy"]
    (loop,) = [line for line in loopAndProxyLog if "referral loop" in line["text"]]
    assert loop["session"] == login["session"], loop


def test_proxyLineUserIsTheNameTheClientLoggedInWith(loopAndProxyLog):
    """
    Every line of a session has the same C{user} (the login name); the
    backend's name is the proxy destination's business, not another user.
    """
    (login,) = [line for line in _logins(loopAndProxyLog) if line["user"] == "px"]
    proxied = [line for line in loopAndProxyLog if line["event"].startswith("proxy ")]
    assert proxied and {line["session"] for line in proxied} == {login["session"]}
    assert {line["user"] for line in proxied} == {"px"}, proxied


def test_forwardedSessionIDIsOnEveryLineOfTheConnection(tmp_path):
    """
    A trusted front's ID (x-originating-ip, x-session-id) gives the
    connection the front's session id: the ID line itself is one of the
    connection's lines and must carry the same id as its login line.
    """
    with _running(tmp_path, "--log-format", "json") as (port, _):
        client = LineClient(port, wait=20)
        reply = client.command(
            b'i ID ("name" "front" "x-originating-ip" "192.0.2.5" "x-session-id" "FrontSess123")'
        )
        assert reply.startswith(b"* ID ")
        client.line()
        assert client.command(b"z LOGIN alice secret").startswith(b"z OK ")
        client.close()
    log = [json.loads(line) for line in _logLines(tmp_path)]
    (login,) = _logins(log)
    (clientID,) = [line for line in log if line["event"] == "client ID"]
    assert login["session"] == "FrontSess123"
    assert clientID["session"] == login["session"], clientID


def test_sigusr1RotationMovesEveryWorkersLinesToTheNewFile(tmp_path):
    """
    logrotate's postrotate signals the pid in the pid file (the first
    process): after the rotation no process may go on writing into the
    rotated file, or a worker's lines go to the file logrotate compresses
    and deletes.
    """
    import signal
    import time

    log = tmp_path / "imapreferral.log"
    rotated = tmp_path / "imapreferral.log.1"
    with _running(tmp_path, "--log-format", "json", "--workers", "2", processes=2) as (port, proc):
        proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 30
        while not rotated.exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        _aliceLogsIn(port, 10)  # both processes accept: some land on the worker
    assert rotated.read_text().count('"event":"login"') == 0
    assert log.read_text().count('"event":"login"') == 10


def test_workersSharingTheLogFileLoseNoLine(tmp_path):
    """
    With --workers, every process writes the same --logfile; each must
    append (O_APPEND), not write at the offset it opened the file at, or
    the processes write over each other's lines (lines lost, lines torn in
    half that no JSON reader takes).
    """

    with _running(tmp_path, "--log-format", "json", "--workers", "2", processes=2) as (port, _):
        _aliceLogsIn(port, 40)  # both processes accept and log
    lines = [json.loads(line) for line in _logLines(tmp_path)]
    assert len(_logins(lines)) == 40


def test_workersSharingATextLogFileLoseNoLine(tmp_path):
    """
    twistd's own text log file writes at its own offset too: with
    --workers, the text lines are appended as the JSON ones are.
    """

    with _running(tmp_path, "--workers", "2", processes=2) as (port, _):
        _aliceLogsIn(port, 40)
    lines = _logLines(tmp_path)
    logins = [line for line in lines if " login remote=" in line]
    assert len(logins) == 40
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", line) for line in logins)
