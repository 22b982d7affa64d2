"""
The listeners C{--listen} and C{--listen-tls} name, checked before the
server starts.

Twisted binds a port in C{privilegedStartService}, after twistd has started
logging (and daemonised): a port out of range or in use is then a
40-line traceback in the log. Here each description is parsed once into a
L{Listener}, its port range checked, and (under twistd) every address tried
before anything starts, so the problem is one line on stderr naming the
option.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import shlex
import socket
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import endpoints

#: The prefix of a listener behind HAProxy (PROXY protocol headers). We
#: parse it ourselves: Twisted's own C{haproxy:} endpoint trusts every peer
#: and lets the greeting out before the header.
PROXY_PREFIX = "haproxy:"


class ListenerError(ValueError):
    """A listener that cannot work; the message names the option and value."""


def withoutProxyPrefix(description: str) -> tuple[str, bool]:
    """Split C{haproxy:tcp:...} into C{("tcp:...", True)}."""
    if description.startswith(PROXY_PREFIX):
        return description[len(PROXY_PREFIX) :], True
    return description, False


@attrs.frozen
class Listener:
    """
    One C{--listen}/C{--listen-tls} value.

    @ivar option: C{"listen"} or C{"listen-tls"}, for messages.
    @ivar description: As given, with any C{haproxy:} prefix.
    @ivar endpoint: The Twisted server endpoint description, without it.
    @ivar proxied: Whether PROXY protocol headers are expected.
    @ivar family: C{AF_INET}/C{AF_INET6} for TCP-like endpoints, else L{None}.
    @ivar interface: The address bound (C{""}: every address).
    @ivar port: The port bound (0: any free one).
    @ivar local: A UNIX socket: reachable from this host only.
    @ivar path: A UNIX socket's path, else L{None}.
    """

    option: str
    description: str
    endpoint: str
    proxied: bool
    family: int | None = None
    interface: str = ""
    port: int = 0
    local: bool = False
    path: str | None = None

    @property
    def shown(self) -> str:
        """C{--listen tcp:1143}, quoted as a shell user would type it."""
        return f"--{self.option} {shlex.quote(self.description)}"


#: Twisted's endpoint parsers call a function with the description's
#: parameters; a wrong one is a TypeError naming that private function.
_TYPE_ERRORS = [
    (
        re.compile(r"got multiple values for argument '(\w+)'"),
        "parameter '{}' given twice (a ':' inside a value is written '\\:', "
        "as in interface=\\:\\:1)",
    ),
    (re.compile(r"got an unexpected keyword argument '(\w+)'"), "unknown parameter '{}'"),
    (re.compile(r"missing 1 required positional argument: '(\w+)'"), "no {}"),
]


#: The prefix of a socket systemd passes (socket activation, C{LISTEN_FDS}).
SYSTEMD_PREFIX = "systemd:"


def _parserProblem(error: Exception, endpoint: str = "") -> str:
    """What Twisted's endpoint parser found wrong, in the user's terms."""
    problem = str(error)
    if endpoint.startswith(SYSTEMD_PREFIX) and isinstance(error, IndexError | KeyError):
        # Twisted indexes the sockets systemd passed (none, outside systemd).
        which = "that index" if isinstance(error, IndexError) else f"the name {problem}"
        return (
            f"systemd passed no socket with {which} (LISTEN_FDS, LISTEN_FDNAMES): "
            "start the service through its .socket unit"
        )
    if problem.startswith("invalid literal for int()"):
        return "a port or backlog that is not a number"
    if isinstance(error, TypeError):
        for pattern, text in _TYPE_ERRORS:
            match = pattern.search(problem)
            if match is not None:
                return text.format(match.group(1))
    return problem


def parseListener(option: str, description: str, reactor: Any, adopted: bool = False) -> Listener:
    """
    Parse one listener description with Twisted's endpoint parser.

    @param adopted: This process is a worker (C{--workers}) and adopts its
        first process's sockets: a C{systemd:} description is not looked
        up, for systemd passed its sockets to the first process only.
    @raise ListenerError: for a description Twisted refuses or a port
        outside 0..65535 (Twisted only finds out when binding).
    """
    endpoint, proxied = withoutProxyPrefix(description)
    shown = f"--{option} {shlex.quote(description)}"
    if adopted and endpoint.startswith(SYSTEMD_PREFIX):
        return Listener(option, description, endpoint, proxied)
    try:
        parsed = endpoints.serverFromString(reactor, endpoint)
    except Exception as e:
        raise ListenerError(f"{shown}: {_parserProblem(e, endpoint)}") from None
    listener = Listener(option, description, endpoint, proxied)
    if isinstance(parsed, endpoints.UNIXServerEndpoint):
        return attrs.evolve(listener, local=True, path=parsed._address)
    port = getattr(parsed, "_port", None)
    if not isinstance(port, int):
        return listener  # systemd:, an endpoint plugin: nothing we can check
    if not 0 <= port <= 65535:
        raise ListenerError(f"{shown}: port {port} out of range (0-65535)")
    interface = getattr(parsed, "_interface", "") or ""
    ipv6 = isinstance(parsed, endpoints.TCP6ServerEndpoint) or ":" in interface
    family = socket.AF_INET6 if ipv6 else socket.AF_INET
    return attrs.evolve(listener, family=family, interface=interface, port=port)


def isLoopbackOnly(listener: Listener) -> bool:
    """
    Whether only this host can reach C{listener}: a UNIX socket, or a TCP
    interface that is a loopback address. A C{haproxy:} listener is there
    to be reached through a proxy, so it never counts; nor does an
    endpoint type we cannot see into.
    """
    if listener.local:
        return True
    if listener.proxied or listener.family is None:
        return False
    if listener.interface == "localhost":
        return True
    try:
        address = ipaddress.ip_address(listener.interface.split("%")[0])
    except ValueError:
        return False  # "" (every address) or a host name
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def _reason(error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        return "address already in use"
    text = error.strerror or str(error)
    return text[:1].lower() + text[1:]


def probeListeners(listeners: Sequence[Listener]) -> None:
    """
    Bind every TCP listener's address now, as Twisted will (with
    C{SO_REUSEADDR}, so a previous run's connections in TIME_WAIT do not
    count), and let go. The probes listen until all are made, so two
    listeners on one port are caught too. A UNIX socket whose path does not
    exist yet is bound and removed again (a missing directory or a
    permission is caught so); an existing path, port 0 and endpoints we
    cannot see into are left to Twisted.

    @raise ListenerError: naming the first listener that cannot bind, and why.
    """
    held: list[socket.socket] = []
    try:
        for listener in listeners:
            if listener.path is not None:
                _probeUnix(listener)
                continue
            if listener.family is None or listener.port == 0:
                continue
            probe = socket.socket(listener.family, socket.SOCK_STREAM)
            held.append(probe)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                address = socket.getaddrinfo(
                    listener.interface or None,
                    listener.port,
                    listener.family,
                    socket.SOCK_STREAM,
                    0,
                    socket.AI_PASSIVE,
                )[0][4]
                probe.bind(address)
                probe.listen(1)
            except OSError as e:
                raise ListenerError(f"{listener.shown}: {_reason(e)}") from None
    finally:
        for probe in held:
            probe.close()


def _probeUnix(listener: Listener) -> None:
    """See L{probeListeners}: bind a UNIX socket at a free path, then remove it."""
    path = listener.path
    assert path is not None
    if os.path.lexists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.bind(path)
    except OSError as e:
        raise ListenerError(f"{listener.shown}: {_reason(e)}") from None
    finally:
        probe.close()
    os.unlink(path)


class ListenerStartError(SystemExit, Exception):
    """
    A listener that could not bind at start: one line and exit status 1.

    A C{SystemExit}, so C{twistd -n} prints just the line; and an
    C{Exception}, because a daemonising twistd tells the waiting parent
    only about an C{Exception} (through its status pipe): on a bare
    C{SystemExit} the command that started the server waited forever.
    """


class ListenerService(StreamServerEndpointService):
    """
    A listening port whose failure to bind stops the server with one line
    naming the listener, not a traceback. Under twistd L{probeListeners}
    has caught the usual causes already; this covers the rest (a race, a
    UNIX socket path that cannot be created).
    """

    _raiseSynchronously = True

    def __init__(self, listener: Listener, endpoint: Any, factory: Any) -> None:
        super().__init__(endpoint, factory)
        self.listener = listener

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except Exception as e:
            error = getattr(e, "socketError", e)
            reason = _reason(error) if isinstance(error, OSError) else str(error)
            raise ListenerStartError(f"imapreferral: {self.listener.shown}: {reason}") from None
