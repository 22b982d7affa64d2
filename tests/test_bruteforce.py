"""
What one untrusted address can guess: real clients on loopback that hang up
right after LOGIN, against the server's injected clock.
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver

from imapreferral.networks import NetworkList
from imapreferral.testing import MemoryPassdb, ServerHarness


class _HangUpClient(LineReceiver):
    """Sends a wrong LOGIN after the greeting and hangs up a moment (clock time) later."""

    delimiter = b"\r\n"

    def __init__(self, attack: HangUpAttack) -> None:
        self.attack = attack
        self.hangUp: IDelayedCall | None = None

    def lineReceived(self, line: bytes) -> None:
        if line.startswith(b"* OK") and self.hangUp is None:
            self.sendLine(b"a LOGIN alice guess")
            self.hangUp = self.attack.clock.callLater(
                self.attack.hangUpAfter, self.transport.loseConnection
            )

    def connectionLost(self, reason: object) -> None:
        if self.hangUp is not None and self.hangUp.active():
            self.hangUp.cancel()
        self.attack.lost(self)


class HangUpAttack:
    """
    C{connections} clients from one address, each connecting, sending a
    wrong LOGIN, hanging up C{hangUpAfter} seconds of C{clock} later and
    connecting again, until L{stop}.
    """

    def __init__(self, clock: task.Clock, port: int, connections: int, hangUpAfter: float):
        self.clock = clock
        self.endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        self.connections = connections
        self.hangUpAfter = hangUpAfter
        self.clients: set[_HangUpClient] = set()
        self.running = True

    def start(self) -> None:
        for _ in range(self.connections):
            self._connect()

    def _connect(self) -> None:
        client = _HangUpClient(self)
        self.clients.add(client)
        connecting = self.endpoint.connect(Factory.forProtocol(lambda: client))
        connecting.addErrback(lambda _: self.clients.discard(client))

    def lost(self, client: _HangUpClient) -> None:
        self.clients.discard(client)
        if self.running:
            self._connect()

    def waiting(self) -> int:
        """How many clients have sent their LOGIN and wait to hang up."""
        return sum(1 for c in self.clients if c.hangUp is not None and c.hangUp.active())

    async def stop(self) -> None:
        self.running = False
        for client in list(self.clients):
            if client.transport is not None:
                client.transport.abortConnection()
        for _ in range(200):
            if not self.clients:
                return
            await task.deferLater(reactor, 0.005, lambda: None)
        raise AssertionError(f"{len(self.clients)} attack clients did not close")


async def _untilAllWaiting(attack: HangUpAttack) -> None:
    for _ in range(500):
        if attack.waiting() == attack.connections:
            return
        await task.deferLater(reactor, 0.001, lambda: None)
    raise AssertionError(f"only {attack.waiting()} clients got to send LOGIN")


@pytest_twisted.ensureDeferred
async def test_hangUpClientsFromOneAddressGetFewGuesses(clock):
    """
    20 connections that hang up 50 ms after LOGIN, for 10 s from one
    untrusted address: the penalty waits before the check, and they never
    wait it out, so only the first guess of each is checked.
    """
    passdb = MemoryPassdb.fromLines({"alice": ("{PLAIN}secret", "")})
    harness = await ServerHarness.forPassdbs(
        [passdb], clock=clock, trustedNetworks=NetworkList(), plaintextAuth="always",
        maxConnectionsPerAddress=0,
    ).start()  # fmt: skip
    attack = HangUpAttack(clock, harness.port, connections=20, hangUpAfter=0.05)
    try:
        attack.start()
        for _ in range(20):  # 10 s of clock time, a LOGIN per client per step
            await _untilAllWaiting(attack)
            clock.advance(0.5)
    finally:
        await attack.stop()
        await harness.stop()
    # Without the wait before the check: 400 (every LOGIN).
    assert len(passdb.lookups) <= 40, f"{len(passdb.lookups)} passwords checked in 10 s"
