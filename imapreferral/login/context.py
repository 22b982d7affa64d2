"""
Where a login comes from, for passdbs that look at it (SQL's C{%r}, C{%l}).
"""

from __future__ import annotations

import binascii
import os
import re

import attrs
from twisted.internet.interfaces import IAddress

from imapreferral.login.client import UNKNOWN


def _hostOf(address: IAddress | None) -> str | None:
    return getattr(address, "host", None)


def _portOf(address: IAddress | None) -> int | None:
    return getattr(address, "port", None)


def _pathOf(address: IAddress | None) -> str | None:
    """A C{UNIXAddress}'s path (Twisted gives C{str} or C{bytes})."""
    name = getattr(address, "name", None)
    if isinstance(name, bytes):
        return name.decode("utf-8", "surrogateescape")
    return name


#: What a session id may look like when a trusted proxy hands us its own.
_SESSION_ID = re.compile(r"[A-Za-z0-9+/=._-]{1,64}")


def newSessionID() -> str:
    """A session id: 12 base64 characters, as Dovecot's (72 random bits)."""
    return binascii.b2a_base64(os.urandom(9), newline=False).decode("ascii")


def acceptableSessionID(value: str | None) -> str | None:
    """
    A session id another proxy forwarded (C{x-session-id}), if it is one a
    log line can carry as it is (no spaces, brackets or controls), else
    L{None}.
    """
    if value is None or _SESSION_ID.fullmatch(value) is None:
        return None
    return value


@attrs.frozen
class LoginContext:
    """
    @ivar remoteIP: The client's address as text, or L{None} if unknown.
    @ivar localIP: The address the client connected to, or L{None}.
    @ivar mechanism: The SASL mechanism in use (C{PLAIN} for IMAP C{LOGIN}).
    @ivar secured: Whether the connection is TLS-protected.
    @ivar service: The protocol, C{imap}.
    @ivar socketPath: For a client on a UNIX socket (which has no address
        and whose peer has no name), the path of the socket it connected
        to, for the log; else L{None}.
    @ivar session: The connection's session id (L{newSessionID}, or the one
        a trusted proxy in front of us forwarded): every log line of the
        connection carries it, and so does the C{ID} we send a backend.
    @ivar client: Which client this is, as far as we can tell before login
        (L{imapreferral.login.client.recogniseClient}): C{c-client}, a
        follower's name, or C{unknown}. Passdbs, checkers and logs may
        read it; C{--referral-mode auto} refers or proxies by it.
    """

    remoteIP: str | None = None
    remotePort: int | None = None
    localIP: str | None = None
    localPort: int | None = None
    mechanism: str = "PLAIN"
    secured: bool = False
    service: str = "imap"
    socketPath: str | None = None
    session: str | None = None
    client: str = UNKNOWN

    @classmethod
    def fromTransport(
        cls, transport: object, mechanism: str, secured: bool = False, service: str = "imap"
    ) -> LoginContext:
        """
        Read the addresses at login time, not at connect time: behind a
        PROXY-protocol wrapper only then do they name the real client.
        """
        getPeer = getattr(transport, "getPeer", None)
        getHost = getattr(transport, "getHost", None)
        peer = getPeer() if getPeer else None
        host = getHost() if getHost else None
        return cls(
            remoteIP=_hostOf(peer),
            remotePort=_portOf(peer),
            localIP=_hostOf(host),
            localPort=_portOf(host),
            mechanism=mechanism,
            secured=secured,
            service=service,
            socketPath=_pathOf(host),
            session=newSessionID(),
        )
