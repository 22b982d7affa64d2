"""
Writing to a plain TCP transport without a reactor round trip.

Twisted's C{write} only buffers: it adds the socket to the reactor's write
set (an C{epoll_ctl}), waits for the next poll to say it is writable, sends,
and takes it out again (another C{epoll_ctl}). For a login front that
answers a handful of short lines per connection, that round trip costs more
than the C{send} itself. L{writeNow} sends at once when nothing is waiting
in the transport's buffer, and hands Twisted only what the kernel did not
take, so order and back-pressure are Twisted's as before.

Only plain C{twisted.internet.tcp} connections qualify: a TLS transport
(C{startTLS}, or a C{TLSMemoryBIOProtocol} listener) and wrappers keep their
own path.
"""

from __future__ import annotations

from twisted.internet import tcp
from twisted.internet.interfaces import ITransport

_PLAIN = (tcp.Server, tcp.Client)


def writeNow(transport: ITransport, data: bytes) -> None:
    """
    Write C{data} to C{transport}: straight to its socket when that is a
    plain TCP connection with nothing buffered, else (and for whatever the
    socket did not take) through C{transport.write}.

    A send error is left to Twisted: the bytes go to its buffer, and its
    write path finds the same error and closes the connection as usual.
    """
    t = transport
    if (
        type(t) in _PLAIN
        and not t.TLS  # type: ignore[attr-defined]
        and t.connected  # type: ignore[attr-defined]
        and not t.disconnecting  # type: ignore[attr-defined]
        and not t._writeDisconnected  # type: ignore[attr-defined]
        and not t._tempDataLen  # type: ignore[attr-defined]
        and not t.dataBuffer  # type: ignore[attr-defined]
    ):
        try:
            sent = t.socket.send(data)  # type: ignore[attr-defined]
        except OSError:
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)
