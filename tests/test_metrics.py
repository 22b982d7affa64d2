"""
C{--metrics}: a real twistd, logged in to with imaplib, scraped over HTTP
with urllib, the text read with prometheus_client's own parser. Counts are
compared as differences between two scrapes, so the tests sharing a server
do not depend on each other's order.
"""

from __future__ import annotations

import imaplib
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from dovecotbackend import USERS as DOVECOT_USERS
from dovecotbackend import startDovecot
from haproxyserver import stopProcess
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from imapreferral.login.logline import describeOutcome
from imapreferral.login.outcome import (
    AuthorizationRefused,
    Disable,
    LoggedIn,
    PrivacyRequired,
    ProxyDestination,
    ProxyLogin,
    Refer,
    Referral,
    Reject,
    Unavailable,
)
from imapreferral.metrics import OUTCOMES

ROOT = Path(__file__).parent.parent
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]

PASSWD = """\
local:{PLAIN}pass
moved2:{PLAIN}pass::::::host=imap2.example.com nologin
moved3:{PLAIN}pass::::::host=imap3.example.com nologin
suggest:{PLAIN}pass::::::host=imap2.example.com
closed:{PLAIN}pass::::::nologin
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _waitForPort(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            return
        except OSError:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "twistd did not start listening"
            time.sleep(0.1)


class Twistd:
    """A C{twistd imapreferral --metrics ...} on loopback, its log in a file."""

    def __init__(self, directory: Path, passwd: str, *options: str) -> None:
        (directory / "users.passwd").write_text(passwd)
        self.port = _freePort()
        self.metricsPort = _freePort()
        self.log = directory / "twistd.log"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [*TWISTD, "-n", "--pidfile=", "imapreferral",
                 "--listen", f"tcp:{self.port}:interface=127.0.0.1",
                 "--metrics", f"tcp:{self.metricsPort}:interface=127.0.0.1",
                 "--passdb", f"passwd-file:{directory / 'users.passwd'}",
                 "--auth-failure-delay", "0", *options],
                cwd=str(directory), env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            _waitForPort(self.proc, self.port, self.log)
            _waitForPort(self.proc, self.metricsPort, self.log)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        stopProcess(self.proc, seconds=20)

    def scrape(self) -> Samples:
        """GET /metrics: every sample by name and labels."""
        url = f"http://127.0.0.1:{self.metricsPort}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = response.read().decode()
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def login(self, user: str, password: str = "pass") -> bytes:
        """One imaplib connection, one LOGIN: the reply's text."""
        with imaplib.IMAP4("127.0.0.1", self.port, timeout=10) as client:
            try:
                return client.login(user, password)[1][0]
            except imaplib.IMAP4.error as e:
                return str(e).encode()


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def grew(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture(scope="module")
def sqlite(tmp_path_factory) -> Path:
    """A SQLite passdb with one user, C{sqluser}, referred to imap4.example.com."""
    directory = tmp_path_factory.mktemp("sql")
    database = directory / "users.sqlite"
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE users (userid TEXT, password TEXT, host TEXT, nologin TEXT)")
        db.execute("INSERT INTO users VALUES ('sqluser', '{PLAIN}pass', 'imap4.example.com', 'y')")
    (directory / "sql.conf").write_text(
        f"driver = sqlite\nconnect = {database}\n"
        "password_query = SELECT password, host, nologin FROM users WHERE userid = '%u'\n"
    )
    return directory


@pytest.fixture(scope="module")
def server(tmp_path_factory, sqlite) -> Iterator[Twistd]:
    """
    One server for the module: the passwd-file, then the SQLite passdb;
    nobody trusted (so loopback counts against the limits and the penalty),
    plaintext allowed, two connections per address, two bad commands.
    """
    twistd = Twistd(
        tmp_path_factory.mktemp("metrics"), PASSWD,
        "--passdb", f"sql:{sqlite / 'sql.conf'}",
        "--trusted-networks", "192.0.2.0/24", "--plaintext-auth", "always",
        "--max-connections-per-ip", "2", "--max-bad-commands", "2",
    )  # fmt: skip
    yield twistd
    twistd.stop()


@pytest.mark.parametrize(
    ("outcome", "label"),
    [
        (LoggedIn(None, lambda: None, "u"), "logged_in"),
        (LoggedIn(None, lambda: None, "u", Referral("u", "h")), "logged_in"),
        (Refer(Referral("u", "h")), "referred"),
        (ProxyLogin(ProxyDestination("h", 143, "u", "p")), "proxied"),
        (Reject(), "failed"),
        (Unavailable("down"), "unavailable"),
        (Disable(), "disabled"),
        (PrivacyRequired(), "privacy_refused"),
        (AuthorizationRefused("u", "v"), "authorization_refused"),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_everyOutcomeHasItsLabel(outcome, label):
    """The login line's C{result} words map to a label; none falls into C{other}."""
    assert OUTCOMES[describeOutcome(outcome)] == label


def test_loginsAreCountedByOutcome(server):
    before = server.scrape()
    replies = [
        server.login("local"),
        server.login("local"),
        server.login("moved2"),
        server.login("suggest"),
        server.login("closed"),
        server.login("local", "wrong"),
        server.login("nobody", "wrong"),
    ]
    assert replies[0].endswith(b"Logged in") and b"REFERRAL" in replies[2]
    after = server.scrape()
    counts = {
        outcome: grew(before, after, "imapreferral_logins_total", outcome=outcome)
        for outcome in {*OUTCOMES.values(), "other"}
    }
    assert {k: v for k, v in counts.items() if v} == {"logged_in": 3, "referred": 1,
                                                       "disabled": 1, "failed": 2}  # fmt: skip
    assert grew(before, after, "imapreferral_login_seconds_count") == 7


def test_authenticateLoginsAreCountedToo(server):
    """The SASL path writes the same login line as LOGIN."""
    before = server.scrape()
    with imaplib.IMAP4("127.0.0.1", server.port, timeout=10) as client:
        with pytest.raises(imaplib.IMAP4.error, match="REFERRAL imap://moved3;AUTH=PLAIN@"):
            client.authenticate("PLAIN", lambda _: b"\0moved3\0pass")
    after = server.scrape()
    assert grew(before, after, "imapreferral_logins_total", outcome="referred") == 1
    assert grew(before, after, "imapreferral_referrals_total", host="imap3.example.com") == 1


def test_referralsAreCountedByDestinationHost(server):
    before = server.scrape()
    for user in ("moved2", "moved3", "moved3", "suggest", "sqluser"):
        server.login(user)
    server.login("moved3", "wrong")  # no referral without the password
    after = server.scrape()
    hosts = ("imap2.example.com", "imap3.example.com", "imap4.example.com")
    assert [grew(before, after, "imapreferral_referrals_total", host=h) for h in hosts] == [
        2,  # NO [REFERRAL] for moved2, OK [REFERRAL] for suggest
        2,
        1,
    ]


def test_passdbLookupsAreTimedPerPassdb(server, sqlite):
    before = server.scrape()
    server.login("local")  # found in the passwd-file
    server.login("sqluser")  # not there: the SQL passdb too
    after = server.scrape()
    passwd = next(
        dict(labels)["passdb"]
        for name, labels in after
        if name == "imapreferral_passdb_lookup_seconds_count"
        and dict(labels)["passdb"].startswith("passwd-file:")
    )
    sql = f"sql:{sqlite / 'sql.conf'}"
    count = "imapreferral_passdb_lookup_seconds_count"
    assert grew(before, after, count, passdb=passwd) == 2
    assert grew(before, after, count, passdb=sql) == 1


def test_passdbDownIsShownUntilItAnswersAgain(server, sqlite):
    sql = f"sql:{sqlite / 'sql.conf'}"
    assert value(server.scrape(), "imapreferral_passdb_up", passdb=sql) == 1
    database = sqlite / "users.sqlite"
    with sqlite3.connect(database) as db:
        db.execute("ALTER TABLE users RENAME TO gone")
    try:
        before = server.scrape()
        assert b"UNAVAILABLE" in server.login("sqluser")
        after = server.scrape()
        assert value(after, "imapreferral_passdb_up", passdb=sql) == 0
        assert grew(before, after, "imapreferral_logins_total", outcome="unavailable") == 1
    finally:
        with sqlite3.connect(database) as db:
            db.execute("ALTER TABLE gone RENAME TO users")
    assert b"REFERRAL" in server.login("sqluser")
    assert value(server.scrape(), "imapreferral_passdb_up", passdb=sql) == 1


def test_connectionsOpenAndPerAddressLimitHits(server):
    before = _scrapeUntil(server, "imapreferral_connections_open", 0)  # earlier tests' are gone
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(2)]
    try:
        for sock in held:
            assert sock.makefile("rb").readline().startswith(b"* OK ")
        assert value(server.scrape(), "imapreferral_connections_open") == 2
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as third:
            assert third.makefile("rb").readline() == (
                b"* BYE [UNAVAILABLE] Maximum number of connections from your address reached.\r\n"
            )
    finally:
        for sock in held:
            sock.close()
    after = _scrapeUntil(server, "imapreferral_connections_open", 0)
    limit = "imapreferral_limit_hits_total"
    assert grew(before, after, limit, limit="max-connections-per-ip") == 1
    assert grew(before, after, limit, limit="max-connections") == 0


def test_badCommandBudgetHitIsCounted(server):
    before = server.scrape()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        f = sock.makefile("rb")
        f.readline()
        sock.sendall(b"a NOSUCH\r\nb NOSUCH\r\n")
        assert f.readline().startswith(b"a BAD ")
        assert f.readline().startswith(b"b BAD ")
        assert f.readline() == b"* BYE Too many invalid IMAP commands.\r\n"
    after = server.scrape()
    assert grew(before, after, "imapreferral_limit_hits_total", limit="max-bad-commands") == 1


def test_failedLoginPutsTheAddressUnderPenalty(server):
    server.login("local", "wrong")
    assert value(server.scrape(), "imapreferral_penalised_addresses") == 1
    server.login("local")  # a success forgives
    assert value(server.scrape(), "imapreferral_penalised_addresses") == 0


def _scrapeUntil(server: Twistd, name: str, expected: float, **labels: str) -> Samples:
    """Scrape until C{name} reads C{expected} (a connection's end is seen a little later)."""
    for _ in range(100):
        samples = server.scrape()
        if value(samples, name, **labels) == expected:
            return samples
        time.sleep(0.05)
    raise AssertionError(f"{name} stayed {value(samples, name, **labels)}, not {expected}")


def test_everyMetricIsInTheReadme(server):
    """The README's Metrics table lists exactly what a scrape shows."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Metrics", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(imapreferral_\w+)`", section, re.MULTILINE))
    url = f"http://127.0.0.1:{server.metricsPort}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    served = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in text_string_to_metric_families(text)
    }
    assert documented == served


def test_grafanaDashboardAsksOnlyForServedMetrics(server):
    dashboard = json.loads((ROOT / "examples" / "grafana-dashboard.json").read_text())
    asked = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"imapreferral_\w+", target["expr"])
    }
    served = {name for name, _ in server.scrape()}
    assert asked and asked <= served, asked - served


def test_otherPathsAreNotFound(server):
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"http://127.0.0.1:{server.metricsPort}/", timeout=10)
    assert caught.value.code == 404


# Proxying, through a real Dovecot


@pytest.fixture(scope="module")
def dovecot():
    backend = startDovecot()
    yield backend
    backend.stop()


@pytest.fixture(scope="module")
def proxyServer(tmp_path_factory, dovecot) -> Iterator[Twistd]:
    """
    Proxies C{alice} to Dovecot (C{proxy}); C{moved}, whose passdb entry
    refers, too (C{--referral-mode proxy}); C{stale} with a password Dovecot
    no longer takes.
    """
    password = DOVECOT_USERS["alice"]
    backend = f"host=127.0.0.1 port={dovecot.port}"
    twistd = Twistd(
        tmp_path_factory.mktemp("proxy"),
        f"alice:{{PLAIN}}{password}::::::proxy {backend}\n"
        f"moved:{{PLAIN}}{password}::::::{backend} nologin destuser=alice\n"
        f"stale:{{PLAIN}}old::::::proxy {backend} destuser=alice\n",
        "--proxy-max-reconnects", "0", "--referral-mode", "proxy",
    )  # fmt: skip
    yield twistd
    twistd.stop()


def test_proxiedSessionIsOpenWhileRelayed(proxyServer):
    before = _scrapeUntil(proxyServer, "imapreferral_connections_open", 0)
    with imaplib.IMAP4("127.0.0.1", proxyServer.port, timeout=10) as client:
        client.login("alice", DOVECOT_USERS["alice"])
        assert client.select("INBOX")[0] == "OK"  # Dovecot answers, through us
        during = proxyServer.scrape()
        client.logout()
    after = _scrapeUntil(proxyServer, "imapreferral_proxied_sessions_open", 0)
    assert value(before, "imapreferral_proxied_sessions_open") == 0
    assert value(during, "imapreferral_proxied_sessions_open") == 1
    assert value(during, "imapreferral_connections_open") == 1
    assert grew(before, after, "imapreferral_logins_total", outcome="proxied") == 1
    assert grew(before, after, "imapreferral_backend_logins_total", result="ok") == 1


def test_proxiedInsteadOfAReferralHasItsOwnOutcome(proxyServer):
    before = proxyServer.scrape()
    with imaplib.IMAP4("127.0.0.1", proxyServer.port, timeout=10) as client:
        client.login("moved", DOVECOT_USERS["alice"])
        assert client.select("INBOX")[0] == "OK"
        client.logout()
    after = _scrapeUntil(proxyServer, "imapreferral_proxied_sessions_open", 0)
    logins = "imapreferral_logins_total"
    assert grew(before, after, logins, outcome="proxied_instead_of_referral") == 1
    assert grew(before, after, logins, outcome="proxied") == 0
    assert grew(before, after, "imapreferral_referrals_total", host="127.0.0.1") == 0


def test_backendRefusalIsAFailedBackendLogin(proxyServer):
    before = proxyServer.scrape()
    with imaplib.IMAP4("127.0.0.1", proxyServer.port, timeout=10) as client:
        with pytest.raises(imaplib.IMAP4.error):
            client.login("stale", "old")  # right here, wrong on Dovecot
    after = proxyServer.scrape()
    assert grew(before, after, "imapreferral_backend_logins_total", result="failed") == 1


# Several processes


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def _multiprocessDirectory(pid: int) -> str:
    """The directory a worker was given, from its environment."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        variables = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
    return variables[b"PROMETHEUS_MULTIPROC_DIR"].decode()


def _loginsCountedBy(directory: str, pid: int) -> float:
    """What one process alone has counted, from its own file (none yet: 0)."""
    path = f"{directory}/counter_{pid}.db"
    if not os.path.exists(path):
        return 0.0
    (family,) = [f for f in MultiProcessCollector.merge([path]) if f.name == "imapreferral_logins"]
    return sum(sample.value for sample in family.samples)


def test_oneScrapeSumsEveryWorker(tmp_path):
    """
    Logins (local, referred, failed, in turn) until both processes have
    counted some, bounded: the first process's scrape shows them all. The
    passdb is behind the auth cache, and labelled as itself.
    """
    twistd = Twistd(tmp_path, PASSWD, "--workers", "2", "--auth-cache-size", "1M")
    try:
        deadline = time.monotonic() + 20
        while not _children(twistd.proc.pid):
            assert time.monotonic() < deadline, "no worker was started"
            time.sleep(0.1)
        (worker,) = _children(twistd.proc.pid)
        directory = _multiprocessDirectory(worker)
        # The worker's files appear as it starts, just before it adopts the listener.
        while not os.path.exists(f"{directory}/counter_{worker}.db"):
            assert time.monotonic() < deadline + 20, "the worker did not start counting"
            time.sleep(0.1)
        sent = {"logged_in": 0, "referred": 0, "failed": 0}
        users = [("local", "pass", "logged_in"), ("moved2", "pass", "referred"),
                 ("local", "wrong", "failed")]  # fmt: skip
        for attempt in range(300):
            user, password, outcome = users[attempt % 3]
            twistd.login(user, password)
            sent[outcome] += 1
            counted = [_loginsCountedBy(directory, pid) for pid in (twistd.proc.pid, worker)]
            if attempt >= 5 and all(counted):
                break
        assert all(counted), f"one process took every connection: {counted}"
        samples = twistd.scrape()
    finally:
        twistd.stop()
    assert {
        outcome: value(samples, "imapreferral_logins_total", outcome=outcome) for outcome in sent
    } == sent
    assert (
        value(samples, "imapreferral_referrals_total", host="imap2.example.com")
        == (sent["referred"])
    )
    assert value(samples, "imapreferral_login_seconds_count") == sum(sent.values())
    passdb = f"passwd-file:{tmp_path / 'users.passwd'}"
    assert value(samples, "imapreferral_passdb_up", passdb=passdb) == 1
    assert value(samples, "imapreferral_passdb_lookup_seconds_count", passdb=passdb) > 0
    deadline = time.monotonic() + 10
    while os.path.exists(directory) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(directory), "the multiprocess directory was left behind"


# Start-up


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("tcp:99999", "--metrics tcp:99999: port 99999 out of range (0-65535)"),
        ("tcp:abc", "--metrics tcp:abc: a port or backlog that is not a number"),
        ("haproxy:tcp:9143", "--metrics haproxy:tcp:9143: no PROXY headers here"),
        ("tcp:{busy}:interface=127.0.0.1", "--metrics tcp:{busy}:interface=127.0.0.1: "
         "address already in use"),
    ],
    ids=["port out of range", "not a port", "haproxy prefix", "port in use"],
)  # fmt: skip
def test_badMetricsEndpointStopsWithOneLine(tmp_path, value, message):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        done = subprocess.run(
            [*TWISTD, "-n", "--pidfile=", "imapreferral",
             "--listen", f"tcp:{_freePort()}:interface=127.0.0.1",
             "--metrics", value.format(busy=port)],
            cwd=str(tmp_path), env=dict(os.environ, PYTHONPATH=str(ROOT)),
            capture_output=True, timeout=30,
        )  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr.decode()) == (
        1,
        b"",
        f"imapreferral: {message.format(busy=port)}\n",
    )
