"""
Shared fixtures: a clean-reactor guard around every test, and a loopback
server harness with an injected clock.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.logger import globalLogPublisher

from imapreferral.login.fields import PassdbReply
from imapreferral.testing import MemoryPassdb, ServerHarness


def _reactorState() -> tuple[set, set, set]:
    return (
        {dc for dc in reactor.getDelayedCalls() if dc.active()},
        set(reactor.getReaders()),
        set(reactor.getWriters()),
    )


@pytest_twisted.async_yield_fixture(autouse=True)
async def cleanReactor():
    """
    Fail a test that leaves listening ports, connections or timers behind
    (pytest-twisted does not check: pytest-twisted#43).
    """
    before = _reactorState()
    yield
    for _ in range(20):  # let closing connections finish, bounded
        after = _reactorState()
        if all(a <= b for a, b in zip(after, before, strict=False)):
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    calls, readers, writers = (a - b for a, b in zip(_reactorState(), before, strict=False))
    pytest.fail(f"dirty reactor: delayed calls {calls}, readers {readers}, writers {writers}")


@pytest.fixture
def clock() -> task.Clock:
    return task.Clock()


@pytest.fixture
def logged() -> Iterator[list[dict]]:
    """Every log event published during the test."""
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


USERS = {
    "plain": ("{PLAIN}pass", ""),
    "refnl": ("{PLAIN}pass", "host=imap2.example.com nologin"),
    "ref": ("{PLAIN}pass", "host=imap2.example.com"),
    "fwd": (None, "nopassword=y host=imap2.example.com nologin nodelay"),
    "fwdd": (None, "nopassword=y host=imap2.example.com nologin"),
    "refnd": ("{PLAIN}pass", "host=imap2.example.com nologin nodelay"),
    "refport": ("{PLAIN}pass", "host=imap2.example.com port=1143 nologin"),
    "refport143": ("{PLAIN}pass", "host=imap2.example.com port=143 nologin"),
    "refdest": ("{PLAIN}pass", "host=imap2.example.com destuser=other@example.com nologin"),
    "refspecial": ("{PLAIN}pass", "host=imap2.example.com destuser=a;b/c:d@e nologin"),
    "refutf8": ("{PLAIN}pass", "host=imap2.example.com destuser=jörg@exämple.com nologin"),
    "u@example.com": ("{PLAIN}pass", "host=imap2.example.com nologin"),
    "refreason": ("{PLAIN}pass", "host=imap2.example.com reason=Moved nologin"),
    "refokreason": ("{PLAIN}pass", "host=imap2.example.com reason=Moved"),
    "ref6": ("{PLAIN}pass", "host=2001:db8::1 nologin"),
    "ref6b": ("{PLAIN}pass", "host=[2001:db8::1] nologin"),
    "ref6port": ("{PLAIN}pass", "host=2001:db8::1 port=1143 nologin"),
    "nl": ("{PLAIN}pass", "nologin"),
    "nlreason": ("{PLAIN}pass", "nologin reason=Maintenance"),
    "emptyhost": ("{PLAIN}pass", "host= nologin"),
    "prox": ("{PLAIN}pass", "proxy host=127.0.0.1 port=10144"),
    "proxnl": ("{PLAIN}pass", "proxy host=127.0.0.1 port=10144 nologin"),
    "weird": ("{NOSUCH}pass", "host=imap2.example.com nologin"),
}


def exampleUsers() -> dict[str, PassdbReply]:
    """The users every passdb test serves, as replies."""
    users = MemoryPassdb.fromLines(USERS).users
    # Fields the passwd-file syntax cannot hold (spaces, controls in reason).
    for name, reason in {
        "refcrlf": "line1\r\n* BYE injected\ttab",
        "refspaces": "Custom text with spaces",
    }.items():
        users[name] = PassdbReply(
            password="{PLAIN}pass", host="imap2.example.com", nologin=True, reason=reason
        )
    return users


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL cluster holding L{exampleUsers}, once per test session."""
    yield from examplePostgres()


def examplePostgres():
    """
    For a fixture: a throwaway PostgreSQL cluster holding L{exampleUsers},
    destroyed after (skipped where PostgreSQL is missing, unless CI
    requires it).
    """
    from sqlbackends import PostgresServer, findPostgres, rowsFor

    bindir = findPostgres()
    if bindir is None:
        if os.environ.get("IMAPREFERRAL_REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL (initdb, pg_ctl) is required but not installed")
        pytest.skip("PostgreSQL is not installed (.ci/run installs it)")
    server = PostgresServer(bindir)
    try:
        server.start()
        server.createDatabase(rowsFor(exampleUsers()))
        yield server
    finally:
        server.destroy()


@pytest.fixture
def passdb() -> MemoryPassdb:
    return MemoryPassdb(exampleUsers())


@pytest_twisted.async_yield_fixture
async def server(passdb, clock):
    """The default server: our MemoryPassdb, failure delay 2 s on C{clock}."""
    harness = await ServerHarness.forPassdbs([passdb], clock=clock).start()
    yield harness
    await harness.stop()


@pytest_twisted.async_yield_fixture
async def client(server):
    """A raw client connected to L{server}, greeting read; closed afterwards."""
    connection = await server.connect()
    yield connection
    await connection.close()
