"""
L{writeNow} over real loopback sockets: bytes leave at once when nothing
waits, and never overtake bytes Twisted still holds.
"""

from __future__ import annotations

import hashlib
import os
import socket

import pytest_twisted
from loopback import Listener, Peer, serverTLS
from tlscerts import makeCertificate
from twisted.internet import reactor

from imapreferral.sockwrite import writeNow

MB = 1024 * 1024


async def _accepted(tlsOptions=None) -> tuple[socket.socket, Peer, Listener]:
    """A raw client socket connected to a Twisted server protocol (a L{Peer})."""
    listener = Listener(Peer)
    port = await listener.listen(tlsOptions)
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    server = await listener.accepted.get()
    return client, server, listener


def _readAvailable(client: socket.socket, seconds: float = 0.5) -> bytes:
    """What the client can read within C{seconds}, without the reactor running."""
    client.settimeout(seconds)
    try:
        return client.recv(65536)
    except TimeoutError:
        return b""


@pytest_twisted.ensureDeferred
async def test_bytesLeaveBeforeTheReactorRunsAgain():
    client, server, listener = await _accepted()
    try:
        writeNow(server.transport, b"* OK hello\r\n")
        # No await since: the reactor has not run, so only a direct send got here.
        assert _readAvailable(client) == b"* OK hello\r\n"
    finally:
        client.close()
        await listener.stop()


@pytest_twisted.ensureDeferred
async def test_laterBytesNeverOvertakeWhatTwistedStillHolds():
    client, server, listener = await _accepted()
    try:
        big = os.urandom(4 * MB)  # more than the socket buffers take at once
        writeNow(server.transport, big)
        writeNow(server.transport, b"END")
        assert server.transport.dataBuffer or server.transport._tempDataBuffer
        expected = hashlib.sha256(big + b"END").hexdigest()
        received, digest = 0, hashlib.sha256()
        client.setblocking(False)
        deadline = reactor.seconds() + 20
        while received < len(big) + 3 and reactor.seconds() < deadline:
            try:
                chunk = client.recv(MB)
            except BlockingIOError:
                await _turn()  # the reactor sends what Twisted holds
                continue
            digest.update(chunk)
            received += len(chunk)
        assert received == len(big) + 3
        assert digest.hexdigest() == expected
    finally:
        client.close()
        await listener.stop()


@pytest_twisted.ensureDeferred
async def test_aTLSConnectionKeepsTwistedsWritePath(tmp_path):
    certificate = makeCertificate(tmp_path)
    client, server, listener = await _accepted(serverTLS(certificate))
    try:
        writeNow(server.transport, b"secret")
        # Plaintext must never reach the socket of a TLS connection.
        assert _readAvailable(client, 0.2) == b""
    finally:
        client.close()
        await listener.stop()


@pytest_twisted.ensureDeferred
async def test_aWriteToAPeerThatResetIsLeftToTwisted():
    client, server, listener = await _accepted()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    client.close()  # RST
    await _turn(0.1)
    for _ in range(3):
        writeNow(server.transport, b"* BYE\r\n")  # no exception reaches the caller
    await server.lost
    await listener.stop()


def _turn(seconds: float = 0.001):
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)
