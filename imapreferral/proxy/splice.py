"""
The relay's fast path on Linux: bytes between two plain TCP sockets go
socket → pipe → socket with C{splice(2)}, so they never enter user space
(no C{recv} into a Python object, no C{send} from one).

L{Relay} (L{imapreferral.proxy.relay}) picks it when L{plainSocket} finds a
plain C{twisted.internet.tcp} connection under each side's transport (not
TLS: a C{TLSMemoryBIOProtocol} or a C{startTLS}'d connection keeps the
Twisted path, which decrypts and encrypts), and no producer on either.
Wrappers that pass bytes through unchanged (a class with
C{relayTransparent = True}: the PROXY-protocol wrapper once its header is
read, Twisted's plain C{ProtocolWrapper}) are looked through.

How it runs (L{Splicer}):
  - Each socket is taken off the reactor (its transport stops reading and
    writing) and a L{_Socket} descriptor on the same file descriptor is
    registered instead. What the transports still held unsent (the login's
    tagged OK) and what each side sent during the login go first, from user
    space, before any spliced byte: order is kept.
  - A readable socket is spliced into its direction's pipe (at most the
    pipe's size), and the pipe at once into the other socket. Whatever the
    destination does not take stays in the pipe: then the source is not
    read again until the destination, now watched for writing, has taken
    it all. So each direction holds at most one pipe's worth (L{PIPE_SIZE})
    beyond the kernel's socket buffers: back-pressure as with Twisted's
    producers.
  - Pipes are taken from a small pool (L{PIPES}) when a direction has bytes
    to move and given back as soon as it is empty, so an idle session (an
    IDLE lasting hours) holds no pipe: two descriptors per session, as
    without splicing; the pool keeps at most L{POOL_SIZE} idle pipes.

Closing is not ours: as soon as either side ends (end of file, an error on
either socket) or the relay closes, L{Splicer.stop} hands both connections
back to their transports as they were, with whatever was still in a pipe
or unsent written into the surviving transport, and the relay closes them
exactly as on the Twisted path (unregistered, flushed, aborted after the
drain timeout). A side that ended is reported through its transport's own
C{connectionLost}, so its owner (the IMAP server, the backend protocol)
sees the end as always and forwards it to the relay.

While spliced, nothing else may read or write the two transports (the
relay's owners only forward events): a transport registering itself with
the reactor again would take the descriptor's place.
"""

from __future__ import annotations

import fcntl
import os
import sys
from typing import TYPE_CHECKING

from twisted.internet import tcp
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IReactorFDSet, IReadWriteDescriptor, ITransport
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

if TYPE_CHECKING:
    from imapreferral.proxy.relay import Relay, RelayEnd

#: Whether this platform can splice (Linux, Python 3.10+).
AVAILABLE = sys.platform.startswith("linux") and hasattr(os, "splice")

_FLAGS = (os.SPLICE_F_NONBLOCK | os.SPLICE_F_MOVE) if AVAILABLE else 0

#: Bytes a direction's pipe holds: the most one splice moves, and the most a
#: direction holds beyond the sockets' buffers. 256 KiB (64 pages) needs no
#: privilege (C{/proc/sys/fs/pipe-max-size} is 1 MiB by default). Past the
#: user's C{/proc/sys/fs/pipe-user-pages-soft} (16384 pages: some 250 such
#: pipes at once) new pipes get the kernel's smallest size: slower, still
#: correct. 1 MiB measured no better (fewer wakeups, the same CPU).
PIPE_SIZE = 256 * 1024

#: Splices from one readable socket per reactor wakeup, at most.
READS_PER_WAKEUP = 4

#: Idle pipes kept for the next direction that needs one.
POOL_SIZE = 16


class _Pipe:
    """A non-blocking pipe and its real capacity."""

    __slots__ = ("read", "size", "write")

    def __init__(self) -> None:
        self.read, self.write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            self.size = fcntl.fcntl(self.write, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:  # over the user's pipe limits: the default size
            self.size = fcntl.fcntl(self.write, fcntl.F_GETPIPE_SZ)

    def close(self) -> None:
        os.close(self.read)
        os.close(self.write)


class PipePool:
    """
    Empty pipes for the directions that have bytes to move.

    @ivar idle: The pipes waiting to be used (at most C{limit}).
    """

    def __init__(self, limit: int = POOL_SIZE) -> None:
        self.idle: list[_Pipe] = []
        self._limit = limit

    def acquire(self) -> _Pipe:
        """An empty pipe; raises L{OSError} when none can be made (no descriptor left)."""
        return self.idle.pop() if self.idle else _Pipe()

    def release(self, pipe: _Pipe) -> None:
        """Take back an I{empty} pipe."""
        if len(self.idle) < self._limit:
            self.idle.append(pipe)
        else:
            pipe.close()

    def clear(self) -> None:
        """Close every idle pipe (tests counting descriptors)."""
        while self.idle:
            self.idle.pop().close()


#: The process's pool.
PIPES = PipePool()


def plainSocket(transport: ITransport) -> tcp.Connection | None:
    """
    The plain TCP connection that carries C{transport}'s bytes unchanged,
    or L{None}: TLS, another kind of transport, a wrapper not known to pass
    bytes through, a registered producer, a connection closed or closing.
    """
    t: object = transport
    while not isinstance(t, tcp.Connection):
        if isinstance(t, TLSMemoryBIOProtocol) or not isinstance(t, ProtocolWrapper):
            return None
        if not getattr(t, "relayTransparent", type(t) is ProtocolWrapper):
            return None
        t = t.transport
    if (
        t.TLS  # startTLS'd
        or not t.connected
        or t.disconnecting
        or t.producer is not None
        or getattr(t, "_aborting", False)
    ):
        return None
    return t


def _takeBuffered(transport: tcp.Connection) -> bytes:
    """What C{transport} holds unsent; its buffers are left empty."""
    t = transport
    held = bytes(memoryview(t.dataBuffer)[t.offset :]) + b"".join(t._tempDataBuffer)
    t.dataBuffer, t.offset, t._tempDataBuffer, t._tempDataLen = b"", 0, [], 0
    return held


@implementer(IReadWriteDescriptor)
class _Socket:
    """
    One relayed socket, registered with the reactor in its transport's
    place. It is the source of one direction (C{out}) and the destination
    of the other (C{into}).

    @ivar pending: Bytes from user space that go to this socket before any
        spliced byte (the login's leftovers).
    """

    __slots__ = (
        "end",
        "fd",
        "into",
        "out",
        "pending",
        "reading",
        "splicer",
        "transport",
        "writing",
    )

    def __init__(self, splicer: Splicer, end: RelayEnd, transport: tcp.Connection) -> None:
        self.splicer = splicer
        self.end = end
        self.transport = transport
        self.fd = transport.fileno()
        self.pending = b""
        self.reading = self.writing = False
        self.out: _Direction
        self.into: _Direction

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return f"splice-{self.end.name}"

    def doRead(self) -> None:
        self.splicer._readable(self)

    def doWrite(self) -> None:
        self.splicer._flush(self.into)

    def connectionLost(self, reason: Failure) -> None:
        """The reactor dropped us (hang-up, error): this side is gone."""
        self.reading = self.writing = False
        self.splicer._gone(self, reason)


class _Direction:
    """One way through the splice: C{source} → pipe → C{destination}."""

    __slots__ = ("destination", "ended", "fill", "pipe", "source")

    def __init__(self, source: _Socket, destination: _Socket) -> None:
        self.source = source
        self.destination = destination
        self.pipe: _Pipe | None = None
        self.fill = 0  # bytes in the pipe
        self.ended = False


class Splicer:
    """
    The spliced state of a L{Relay}; see the module docstring.

    @ivar stopped: Whether the transports have been handed back.
    """

    __slots__ = ("_backend", "_client", "_directions", "_pool", "_reactor", "relay", "stopped")

    def __init__(
        self,
        relay: Relay,
        client: tcp.Connection,
        backend: tcp.Connection,
        pool: PipePool = PIPES,
    ) -> None:
        self.relay = relay
        self._reactor: IReactorFDSet = client.reactor
        self._pool = pool
        self._client = _Socket(self, relay.client, client)
        self._backend = _Socket(self, relay.backend, backend)
        up = _Direction(self._client, self._backend)
        down = _Direction(self._backend, self._client)
        self._client.out = self._backend.into = up
        self._backend.out = self._client.into = down
        self._directions = (up, down)
        self.stopped = False

    def start(self, toBackend: bytes, toClient: bytes) -> None:
        """
        Take both sockets from their transports, with what the transports
        still held; send that and C{toBackend} / C{toClient} first, then
        splice.
        """
        for sock, first in ((self._client, toClient), (self._backend, toBackend)):
            sock.transport.stopReading()
            sock.transport.stopWriting()
            sock.pending = _takeBuffered(sock.transport) + first
        for sock in (self._client, self._backend):
            self._read(sock, True)
        for sock in (self._client, self._backend):
            if sock.pending and not self.stopped:
                self._flush(sock.into)  # what it does not take stops the other's reading

    def held(self) -> int:
        """Bytes held for either side: in the pipes and not yet sent from user space."""
        return sum(d.fill + len(d.destination.pending) for d in self._directions)

    def stop(self, gone: _Socket | None = None) -> None:
        """
        Hand both connections back to their transports, neither reading
        nor writing: what a pipe or L{_Socket.pending} still held for a
        side is written to its transport, unless that side is C{gone}.
        Pipes go back to the pool (or are closed).
        """
        if self.stopped:
            return
        self.stopped = True
        for sock in (self._client, self._backend):
            self._read(sock, False)
            self._write(sock, False)
        for direction in self._directions:
            held = [direction.destination.pending]
            direction.destination.pending = b""
            pipe = direction.pipe
            if pipe is not None:
                direction.pipe = None
                try:
                    while direction.fill:
                        chunk = os.read(pipe.read, direction.fill)
                        if not chunk:
                            break
                        direction.fill -= len(chunk)
                        held.append(chunk)
                except OSError:
                    pass
                if direction.fill:
                    direction.fill = 0
                    pipe.close()
                else:
                    self._pool.release(pipe)
            data = b"".join(held)
            if data and direction.destination is not gone:
                direction.destination.transport.write(data)

    # Reactor registration: only on a change (each is an epoll_ctl).

    def _read(self, sock: _Socket, on: bool) -> None:
        if on != sock.reading:
            sock.reading = on
            (self._reactor.addReader if on else self._reactor.removeReader)(sock)

    def _write(self, sock: _Socket, on: bool) -> None:
        if on != sock.writing:
            sock.writing = on
            (self._reactor.addWriter if on else self._reactor.removeWriter)(sock)

    # Moving bytes.

    def _readable(self, source: _Socket) -> None:
        """
        Splice what C{source} has into its direction's pipe, then on; again
        while it has more and the destination takes it all, up to
        L{READS_PER_WAKEUP} times (each reactor wakeup costs more than a
        splice that finds nothing).
        """
        direction = source.out
        for _ in range(READS_PER_WAKEUP):
            if not source.reading or self.stopped:
                return  # a backlog, or the end
            pipe = direction.pipe
            if pipe is None:
                try:
                    pipe = direction.pipe = self._pool.acquire()
                except OSError:  # out of descriptors: the Twisted path instead
                    self.stop()
                    self.relay._startTwisted()
                    return
            try:
                moved = os.splice(source.fd, pipe.write, pipe.size, flags=_FLAGS)
            except BlockingIOError:  # nothing more to read (the pipe is empty)
                direction.pipe = None
                self._pool.release(pipe)
                return
            except OSError as e:
                self._gone(source, Failure(ConnectionLost(e.strerror)))
                return
            if not moved:
                direction.ended = True
                self._gone(source, Failure(ConnectionDone()))
                return
            source.end.received += moved
            direction.fill += moved
            self._flush(direction)

    def _flush(self, direction: _Direction) -> None:
        """
        Send the destination's pending bytes, then the pipe, as far as the
        destination takes them; then read the source again, or wait (not
        reading it) until the destination is writable.
        """
        destination = direction.destination
        try:
            if destination.pending:
                sent = destination.transport.socket.send(destination.pending)
                destination.pending = destination.pending[sent:]
            pipe = direction.pipe
            while direction.fill and not destination.pending:
                moved = os.splice(pipe.read, destination.fd, direction.fill, flags=_FLAGS)
                if not moved:
                    break
                direction.fill -= moved
        except BlockingIOError:
            pass
        except OSError as e:
            self._gone(destination, Failure(ConnectionLost(e.strerror)))
            return
        if direction.fill or destination.pending:
            self._read(direction.source, False)
            self._write(destination, True)
            return
        self._write(destination, False)
        if direction.pipe is not None:
            self._pool.release(direction.pipe)
            direction.pipe = None
        if not direction.ended:
            self._read(direction.source, True)

    def _gone(self, sock: _Socket, reason: Failure) -> None:
        """
        C{sock}'s side ended: hand both back, then end that transport as the
        reactor would have, so its owner tells the relay.
        """
        if self.stopped:
            return
        self.stop(gone=sock)
        sock.transport.connectionLost(reason)


def attempt(relay: Relay, toBackend: bytes, toClient: bytes) -> Splicer | None:
    """
    Splice C{relay}'s two connections if both are plain TCP sockets (see
    L{plainSocket}) of one reactor; else L{None}, and nothing was touched.
    """
    if not AVAILABLE:
        return None
    client = plainSocket(relay.client.transport)
    backend = plainSocket(relay.backend.transport)
    if client is None or backend is None or client.reactor is not backend.reactor:
        return None
    splicer = Splicer(relay, client, backend)
    splicer.start(toBackend, toClient)
    return splicer
