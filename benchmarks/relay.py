"""
How fast is the byte relay, and what does an idle relayed session cost?

Runs the relay of ``imapreferral.proxy.relay`` alone, in its own process: it
listens on a loopback port and, for each connection, connects to a sink
and splices the two (no IMAP, no login). This process plays client and
backend with plain sockets.

  * throughput: one connection pushes --megabytes through the relay to the
    sink, then the same straight to the sink; prints MB/s for both.
  * idle: opens --sessions client connections through the relay and holds
    them; prints the relay process's RSS growth per session (two sockets
    each, as a proxied IDLE session).

    .venv/bin/python benchmarks/relay.py --megabytes 200 --sessions 5000

Prints the command line and the figures. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import socket
import subprocess
import sys
import threading
import time

RELAY = r"""
import sys
from twisted.internet import reactor
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from imapreferral.proxy.relay import Relay

class Owner(Protocol):
    end = None
    def dataReceived(self, data):
        self.end.dataReceived(data)
    def connectionLost(self, reason):
        if self.end is not None:
            self.end.connectionLost(reason)

class Back(Owner):
    def connectionMade(self):
        front = self.factory.front
        relay = Relay(front.transport, self.transport, reactor)
        front.end, self.end = relay.client, relay.backend
        relay.start()

class Front(Owner):
    def connectionMade(self):
        self.transport.pauseProducing()
        factory = ClientFactory.forProtocol(Back)
        factory.front = self
        reactor.connectTCP("127.0.0.1", int(sys.argv[1]), factory)

port = reactor.listenTCP(0, Factory.forProtocol(Front), interface="127.0.0.1", backlog=1024)
print(port.getHost().port, flush=True)
reactor.run()
"""


def rssKB(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Sink:
    """Accepts connections; drains each in a thread (or just holds them)."""

    def __init__(self, drain: bool) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=8192)
        self.port = self.listener.getsockname()[1]
        self.drain = drain
        self.held: list[socket.socket] = []
        self.received = 0
        self.done = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if self.drain:
                threading.Thread(target=self._read, args=(conn,), daemon=True).start()
            else:
                self.held.append(conn)

    def _read(self, conn: socket.socket) -> None:
        while chunk := conn.recv(1 << 20):
            self.received += len(chunk)
        conn.close()
        self.done.set()


def push(port: int, total: int, sink: Sink) -> float:
    """Send C{total} bytes to C{port}; seconds until the sink had them all."""
    sink.done.clear()
    sink.received = 0
    block = os.urandom(1 << 20)
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as conn:
        sent = 0
        while sent < total:
            conn.sendall(block)
            sent += len(block)
    if not sink.done.wait(120) or sink.received != total:
        raise RuntimeError(f"sink got {sink.received} of {total}")
    return time.perf_counter() - start


def startRelay(sinkPort: int) -> tuple[subprocess.Popen[str], int]:
    relay = subprocess.Popen(
        [sys.executable, "-c", RELAY, str(sinkPort)], stdout=subprocess.PIPE, text=True
    )
    return relay, int(relay.stdout.readline())


def throughput(megabytes: int) -> None:
    sink = Sink(drain=True)
    relay, relayPort = startRelay(sink.port)
    try:
        total = megabytes << 20
        push(relayPort, 16 << 20, sink)  # warm-up
        relayed = push(relayPort, total, sink)
        direct = push(sink.port, total, sink)
        print(f"throughput, {megabytes} MB one way on loopback:")
        print(f"  direct   {megabytes / direct:8.1f} MB/s")
        print(f"  relayed  {megabytes / relayed:8.1f} MB/s  ({direct / relayed:.0%} of direct)")
    finally:
        relay.terminate()
        relay.wait(10)


def idle(sessions: int) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the relay inherits it
    sink = Sink(drain=False)
    relay, relayPort = startRelay(sink.port)
    try:
        time.sleep(0.5)
        before = rssKB(relay.pid)
        clients = [socket.create_connection(("127.0.0.1", relayPort)) for _ in range(sessions)]
        for _ in range(200):
            if len(sink.held) >= sessions:
                break
            time.sleep(0.05)
        time.sleep(1.0)
        after = rssKB(relay.pid)
        print(f"idle: {len(sink.held)} relayed sessions held")
        print(f"  relay RSS {before / 1024:.1f} MB -> {after / 1024:.1f} MB:")
        print(f"  {(after - before) * 1024 / sessions / 1024:.2f} KB per session (two sockets)")
        for client in clients:
            client.close()
    finally:
        relay.terminate()
        relay.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--sessions", type=int, default=5000)
    options = parser.parse_args()
    print("$", shlex.join([os.path.relpath(sys.executable), *sys.argv]))
    throughput(options.megabytes)
    idle(options.sessions)


if __name__ == "__main__":
    main()
