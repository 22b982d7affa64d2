"""
The published fail2ban filter (examples/fail2ban/) against real log lines:
a real twistd writes its log file while clients log in with hostile user
names; the filter must report every failure, and only the real client's
address. A second twistd proxies to a real Dovecot: the backend's refusal
of a C{nopassword} user's password counts, the backend being down or
refusing a password the front had accepted does not. With fail2ban
installed its own tools run the filter and check the jail; the filter is
also always applied in Python, with fail2ban's C{<HOST>} and date handling
copied from its source.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from base64 import b64encode
from pathlib import Path

import pytest
from dovecotbackend import startDovecot
from hostile import HOSTILE_NAMES
from lineclient import LineClient
from twisted.logger import formatEvent

from imapreferral.login.context import LoginContext
from imapreferral.login.credentials import PasswordCredentials
from imapreferral.login.logline import logAuthentication, plainReferralText
from imapreferral.login.outcome import Reject

REPO = Path(__file__).parent.parent
FILTER = REPO / "examples" / "fail2ban" / "filter.d" / "imapreferral.conf"
JAIL = REPO / "examples" / "fail2ban" / "jail.d" / "imapreferral.conf"
#: The client that fails to log in; trusted, so plaintext LOGIN is allowed.
CLIENT = "127.0.0.5"
#: An untrusted client: its plaintext refusals and refused connections are
#: not authentication failures and must not be reported.
OTHER = "127.0.0.6"

# fail2ban 1.0.2, fail2ban/server/ipdns.py (IPAddr.IP_4_RE, IP_6_RE) and
# server/failregex.py (R_HOST): what <HOST> becomes with usedns = warn, the
# jail default (the DNS alternative included).
_IP4 = r"(?:\d{1,3}\.){3}\d{1,3}"
_IP6 = r"(?:[0-9a-fA-F]{1,4}::?|::){1,7}(?:[0-9a-fA-F]{1,4}|(?<=:):)"
_ADDR = rf"\[?(?:(?:::f{{4,6}}:)?(?P<ip4>{_IP4})|(?P<ip6>{_IP6}))\]?"
F2B_HOST = rf"(?:{_ADDR}|(?P<dns>[\w\-.^_]*\w))"
# server/datetemplate.py: a {^LN-BEG} date pattern must start the line
# (after at most two non-word characters) and end at a word boundary.
_DATE_FIELDS = {"%Y": r"\d{4}", "%m": r"\d\d", "%d": r"\d\d", "%H": r"\d\d",
                "%M": r"\d\d", "%S": r"\d\d", "%z": r"[+-]\d{4}"}  # fmt: skip


def _readFilter() -> tuple[list[re.Pattern], re.Pattern]:
    """The failregexes and the date regex, as fail2ban builds them."""
    parser = configparser.ConfigParser()  # %(name)s and %% as in fail2ban's reader
    parser.read(FILTER)
    definition = parser["Definition"]
    failregexes = [
        re.compile(line.replace("<HOST>", F2B_HOST))
        for line in definition["failregex"].splitlines()
        if line.strip()
    ]
    pattern = definition["datepattern"].strip()
    assert pattern.startswith("{^LN-BEG}")
    date = re.escape(pattern.removeprefix("{^LN-BEG}"))
    for field, regex in _DATE_FIELDS.items():
        date = date.replace(re.escape(field), regex)
    return failregexes, re.compile(rf"^(?:\W{{0,2}})?({date})(?=\b|\W|$)")


def hostsInPython(log: str) -> list[str]:
    """
    Apply the filter as fail2ban's C{Filter.processLine} does: cut the date
    out of the line, search each failregex in what is left (plus a newline),
    take the host group.
    """
    failregexes, date = _readFilter()
    hosts = []
    for line in log.splitlines():
        found = date.search(line)
        if found is None:
            continue  # fail2ban ignores lines without a date
        rest = line[: found.start(1)] + line[found.end(1) :] + "\n"
        for regex in failregexes:
            match = regex.search(rest)
            if match is not None:
                hosts.append(match["ip4"] or match["ip6"] or match["dns"])
                break
    return hosts


FAILED = b" NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"


def _talk(port: int) -> int:
    """The clients' side; returns how many authentications failed."""
    client = LineClient(port, CLIENT)
    failures = 0
    for i, name in enumerate(HOSTILE_NAMES.values()):
        tag = b"h%d" % i
        assert client.login(tag, name, b"wrong") == tag + FAILED
        failures += 1
    for i, name in enumerate(n for n in HOSTILE_NAMES.values() if b"\0" not in n):
        tag = b"p%d" % i
        assert client.command(
            tag + b" AUTHENTICATE PLAIN " + b64encode(b"\0" + name + b"\0x")
        ) == (tag + FAILED)
        failures += 1
    assert client.login(b"w", b"alice", b"wrong") == b"w" + FAILED
    failures += 1
    assert client.command(b"r LOGIN refnl pass").startswith(b"r NO [REFERRAL ")
    assert client.command(b'i ID ("name" "remote=6.6.6.6\\" x")').startswith(b"* ID ")
    assert client.line() == b"i OK ID completed.\r\n"
    assert client.command(b"z LOGIN alice secret").startswith(b"z OK ")
    client.close()
    other = LineClient(port, OTHER)
    assert b"[PRIVACYREQUIRED]" in other.command(b'a LOGIN "remote=6.6.6.6" pw')
    refused = LineClient(port, OTHER)  # over --max-connections-per-ip
    assert refused.greeting.startswith(b"* BYE [UNAVAILABLE] ")
    refused.close()
    other.close()
    return failures


def _freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _waitForListener(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 5, (CLIENT, 0)).close()
            return
        except OSError:
            assert proc.poll() is None, log.read_text() if log.exists() else "twistd exited"
            assert time.monotonic() < deadline, "twistd did not start listening"
            time.sleep(0.1)


def _serve(directory: Path, users: str, talk, *options: str):
    """Run twistd with a log file on C{users}, C{talk(port)}, stop it; the log and what talk said."""
    passwd = directory / "users.passwd"
    passwd.write_text(users)
    log = directory / "imapreferral.log"
    port = _freePort()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
         "-n", "--pidfile=", "--logfile", str(log), "imapreferral",
         "--listen", f"tcp:{port}:interface=127.0.0.1", "--passdb", f"passwd-file:{passwd}",
         "--auth-failure-delay", "0", "--auth-penalty-cap", "0", "--max-auth-failures", "100",
         "--trusted-networks", f"{CLIENT}/32", *options],
        cwd=directory, env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _waitForListener(proc, port, log)
        said = talk(port)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    return str(log), said


@pytest.fixture(scope="module")
def serverLog(tmp_path_factory) -> tuple[str, int]:
    """Run twistd with a log file, talk to it, stop it; the log and the failure count."""
    return _serve(
        tmp_path_factory.mktemp("fail2ban"),
        "alice:{PLAIN}secret\nrefnl:{PLAIN}pass::::::host=imap2.example.com nologin\n",
        _talk,
        "--max-connections-per-ip", "1",
    )  # fmt: skip


def test_logHasOneAuthenticationFailureLinePerFailure(serverLog):
    """What precedes the first quote of a line is ours: no forged field gets there."""
    log, failures = serverLog
    heads = [line.split('"', 1)[0] for line in Path(log).read_text(encoding="utf-8").splitlines()]
    assert not [head for head in heads if "6.6.6.6" in head]
    failed = [h for h in heads if h.endswith(": authentication failed user=")]
    assert len(failed) == failures
    assert all(f"] login remote={CLIENT} local=127.0.0.1:" in head for head in failed)


def test_filterInPythonReportsOnlyTheRealClient(serverLog):
    log, failures = serverLog
    assert hostsInPython(Path(log).read_text(encoding="utf-8")) == [CLIENT] * failures


FAIL2BAN_REGEX = shutil.which("fail2ban-regex")
FAIL2BAN_CLIENT = shutil.which("fail2ban-client")
needsFail2ban = pytest.mark.skipif(
    FAIL2BAN_REGEX is None or FAIL2BAN_CLIENT is None,
    reason="fail2ban is not installed (Debian: apt-get install fail2ban)",
)


def _fail2banHosts(log: str) -> list[str]:
    """The host of each failure fail2ban-regex finds in C{log} with our filter."""
    result = subprocess.run(
        [FAIL2BAN_REGEX, "--raw", "--out", "ip", log, str(FILTER)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return result.stdout.split()


@needsFail2ban
def test_fail2banRegexReportsOnlyTheRealClient(serverLog):
    log, failures = serverLog
    assert _fail2banHosts(log) == [CLIENT] * failures


@needsFail2ban
def test_fail2banAcceptsTheFilterAndJail(serverLog, tmp_path):
    """fail2ban's own configuration test, on a copy of /etc/fail2ban with our files."""
    log, _ = serverLog
    config = tmp_path / "fail2ban"
    shutil.copytree("/etc/fail2ban", config)
    for old in (config / "jail.d").iterdir():
        old.unlink()
    shutil.copy(FILTER, config / "filter.d")
    jail = re.sub(r"(?m)^logpath\s*=.*$", f"logpath = {log}", JAIL.read_text())
    (config / "jail.d" / "imapreferral.conf").write_text(jail)
    result = subprocess.run(
        [FAIL2BAN_CLIENT, "-c", str(config), "-t"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


#: (address in the context, the host fail2ban reports: it drops ::ffff:)
ADDRESS_TABLE = [
    ("2001:db8::7", "2001:db8::7"),
    ("::1", "::1"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("192.0.2.7", "192.0.2.7"),
]
EXPECTED_HOSTS = [host for _, host in ADDRESS_TABLE]


@pytest.fixture
def addressLog(tmp_path, logged) -> str:
    """One failure line per address, as logAuthentication writes them, in twistd's format."""
    for address, _ in ADDRESS_TABLE:
        context = LoginContext(address, 5555, "2001:db8::1", 143, "PLAIN")
        name = b"remote=6.6.6.6 " + address.encode()
        logAuthentication(Reject(), PasswordCredentials(name, b"x", context), plainReferralText)
    path = tmp_path / "imapreferral.log"
    lines = [f"2026-12-02T13:07:00+0000 [-] {formatEvent(e)}\n" for e in logged]
    path.write_text("".join(lines), encoding="utf-8")
    return str(path)


def test_filterInPythonReportsEachAddressForm(addressLog):
    assert hostsInPython(Path(addressLog).read_text(encoding="utf-8")) == EXPECTED_HOSTS


@needsFail2ban
def test_fail2banRegexReportsEachAddressForm(addressLog):
    assert _fail2banHosts(addressLog) == EXPECTED_HOSTS


def _talkToProxyUsers(port: int) -> list[str]:
    """
    Proxy logins that fail in the backend login; the states the lines must
    name. Only nopw's wrong password was a guess that a password check
    answered (at the backend, as C{nopassword} leaves it there).
    """
    client = LineClient(port, CLIENT)
    assert client.command(b"a LOGIN nopw wrong") == b"a" + FAILED  # the backend's refusal
    assert client.command(b"b LOGIN bob frontpw") == b"b" + FAILED  # checked here: no guess
    assert client.command(b"c LOGIN gone wrong").startswith(b"c NO [UNAVAILABLE] ")
    assert client.command(b"d LOGIN nopw secret").startswith(b"d OK [CAPABILITY ")
    client.close()
    return ["login", "login", "connect"]


@pytest.fixture(scope="module")
def proxyLog(tmp_path_factory) -> tuple[str, list[str]]:
    """twistd proxying to a real Dovecot (alice: secret, bob: secret2); its log."""
    dovecot = startDovecot()
    to = f"proxy host=127.0.0.1 port={dovecot.port}"
    users = (
        f"nopw:::::::{to} nopassword destuser=alice\n"
        f"bob:{{PLAIN}}frontpw::::::{to}\n"
        f"gone:::::::proxy nopassword host=127.0.0.1 port={_freePort()}\n"
    )
    try:
        return _serve(
            tmp_path_factory.mktemp("fail2ban-proxy"), users, _talkToProxyUsers,
            "--proxy-max-reconnects", "0",
        )  # fmt: skip
    finally:
        dovecot.stop()


def test_logSaysBackendRefusalOfAnUncheckedPasswordIsAnAuthenticationFailure(proxyLog):
    log, states = proxyLog
    lines = Path(log).read_text(encoding="utf-8").splitlines()
    failed = [line.split(" proxy ", 1)[1] for line in lines if "] proxy " in line]
    failed = [line for line in failed if not line.startswith(("started:", "ended:"))]
    assert [line.split(":", 1)[0] for line in failed] == [
        "authentication failed", "failed", "failed"
    ]  # fmt: skip
    assert [line.split(" state=", 1)[1].split()[0] for line in failed] == states
    assert all(line.split(": ", 1)[1].startswith(f"remote={CLIENT} ") for line in failed)


def test_filterInPythonCountsBackendPasswordRefusalsOnly(proxyLog):
    log, _ = proxyLog
    assert hostsInPython(Path(log).read_text(encoding="utf-8")) == [CLIENT]


@needsFail2ban
def test_fail2banRegexCountsBackendPasswordRefusalsOnly(proxyLog):
    log, _ = proxyLog
    assert _fail2banHosts(log) == [CLIENT]
