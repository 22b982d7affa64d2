"""
The receiving side of a proxy's C{ID}: the client address and TTL a
trusted proxy forwards (first C{ID}, before login, from
C{--trusted-networks} only), and the TTL loop guard between two of our
fronts.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import capturedLogs

from imapreferral.networks import NetworkList
from imapreferral.proxy.connect import BackendConnector
from imapreferral.testing import MemoryPassdb, ServerHarness

FORWARD = b'x ID ("x-originating-ip" "192.0.2.9" "x-originating-port" "4242")'
SERVERBUG = b"NO [SERVERBUG] Account is temporarily unavailable."


def loginRemotes(events: list[dict]) -> list[str | None]:
    """The client address of each login log line."""
    return [e["remote"] for e in events if "mechanism" in e and "result" in e]


async def _loginAfter(harness: ServerHarness, *ids: bytes) -> list[dict]:
    """Send each ID, then log in as C{plain}; the log events."""
    with capturedLogs() as events:
        async with harness.serving() as client:
            for line in ids:
                assert (await client.command(line))[-1] == b"x OK ID completed."
            assert (await client.command(b"a LOGIN plain pass"))[-1].startswith(b"a OK")
    return events


@pytest_twisted.ensureDeferred
async def test_trustedProxyNamesTheClientForLogs(passdb, clock):
    events = await _loginAfter(ServerHarness.forPassdbs([passdb], clock=clock), FORWARD)
    assert loginRemotes(events) == ["192.0.2.9"]


@pytest_twisted.ensureDeferred
async def test_untrustedPeerCannotPickItsAddress(passdb, clock):
    harness = ServerHarness.forPassdbs(
        [passdb], clock=clock, trustedNetworks=NetworkList(), plaintextAuth="always"
    )
    assert loginRemotes(await _loginAfter(harness, FORWARD)) == ["127.0.0.1"]


@pytest_twisted.ensureDeferred
async def test_onlyTheFirstIDCounts(passdb, clock):
    harness = ServerHarness.forPassdbs([passdb], clock=clock)
    events = await _loginAfter(harness, b'x ID ("name" "proxy")', FORWARD)
    assert loginRemotes(events) == ["127.0.0.1"]


@pytest_twisted.ensureDeferred
async def test_forwardedTTLOfOneRefusesToProxy(clock):
    passdb = MemoryPassdb.fromLines({"p": ("{PLAIN}pass", "proxy host=127.0.0.1 port=1")})
    async with ServerHarness.forPassdbs([passdb], clock=clock).serving() as client:
        await client.command(b'x ID ("x-proxy-ttl" "1")')
        assert await client.command(b"a LOGIN p pass") == [b"a " + SERVERBUG]


@pytest_twisted.ensureDeferred
async def test_twoFrontsProxyingToEachOtherStopAtTheTTL(clock):
    """A proxies to B, B to A: the TTL runs out, the client gets SERVERBUG."""
    passdbs = [MemoryPassdb(), MemoryPassdb()]
    fronts = [
        await ServerHarness.forPassdbs(
            [passdb], clock=clock, connector=BackendConnector(reactor, clock, maxReconnects=0)
        ).start()
        for passdb in passdbs
    ]
    for passdb, other in zip(passdbs, reversed(fronts), strict=True):
        passdb.users = MemoryPassdb.fromLines(
            {"loop": ("{PLAIN}pass", f"proxy host=127.0.0.1 port={other.port}")}
        ).users
    with capturedLogs() as events:
        client = await fronts[0].connect()
        assert await client.command(b"a LOGIN loop pass") == [b"a " + SERVERBUG]
        await client.close()
    for front in fronts:
        await front.stop()
    causes = [e.get("cause") for e in events if e.get("event") == "proxy failed"]
    assert "looping" in causes[0]
    assert len(causes) == 7  # one per hop: Dovecot's TTL of 7


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"], ids=["address", "name"])
@pytest_twisted.ensureDeferred
async def test_proxyMaybeToThisServerLogsInHere(clock, host):
    """A host name is resolved (without blocking) for the check, as Dovecot's auth does."""
    passdb = MemoryPassdb()
    harness = await ServerHarness.forPassdbs([passdb], clock=clock).start()
    passdb.users = MemoryPassdb.fromLines(
        {"maybe": ("{PLAIN}pass", f"proxy_maybe host={host} port={harness.port}")}
    ).users
    client = await harness.connect()
    assert await client.command(b"a LOGIN maybe pass") == [
        b"a OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID NAMESPACE IDLE] Logged in"
    ]
    await client.close()
    await harness.stop()


@pytest.mark.parametrize(
    "forward",
    [
        b'x ID ("x-originating-ip" "fe80::1%eth0")',
        b'x ID ("x-originating-ip" "fe80::1% remote=6.6.6.6")',
        b'x ID ("x-originating-ip" "not an address")',
    ],
    ids=["zone id", "zone id forging a field", "not an address"],
)
@pytest_twisted.ensureDeferred
async def test_forwardedAddressMustBeAPlainAddress(passdb, clock, forward):
    """A zone id could carry any text into the log's C{remote=}: such a value is ignored."""
    events = await _loginAfter(ServerHarness.forPassdbs([passdb], clock=clock), forward)
    assert loginRemotes(events) == ["127.0.0.1"]


@pytest_twisted.ensureDeferred
async def test_forwardedPortThatIsNotASCIIDigitsIsIgnored(passdb, clock):
    forward = 'x ID ("x-originating-ip" "192.0.2.9" "x-originating-port" "²")'.encode()
    events = await _loginAfter(ServerHarness.forPassdbs([passdb], clock=clock), forward)
    assert loginRemotes(events) == ["192.0.2.9"]


def test_twistdProxyMaybeToItsOwnListenerByNameLogsInHere(tmp_path):
    """The service wires the connector's resolver into the checker."""
    from test_proxy_server import twistdSession

    line = "maybe:{PLAIN}pass::::::proxy_maybe host=localhost port=LISTENPORT"
    lines, _ = twistdSession(tmp_path, line, b"a LOGIN maybe pass\r\n", b"a")
    assert lines[-1].startswith(b"a OK [CAPABILITY IMAP4rev1 ")
    assert lines[-1].endswith(b"] Logged in\r\n")
