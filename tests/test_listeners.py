"""Listener descriptions: parsing, loopback or not, and binding before start."""

from __future__ import annotations

import socket

import pytest
from twisted.internet import endpoints, reactor
from twisted.internet.protocol import Factory

from imapreferral.listeners import (
    ListenerError,
    ListenerService,
    isLoopbackOnly,
    parseListener,
    probeListeners,
)


def listener(description: str, option: str = "listen"):
    return parseListener(option, description, reactor)


@pytest.mark.parametrize(
    ("description", "message"),
    [
        ("tcp:99999", "--listen tcp:99999: port 99999 out of range (0-65535)"),
        ("tcp:-1", "--listen tcp:-1: port -1 out of range (0-65535)"),
        ("haproxy:tcp:70000", "--listen haproxy:tcp:70000: port 70000 out of range (0-65535)"),
        ("nonsense:1", "--listen nonsense:1: Unknown endpoint type: 'nonsense'"),
        ("tcp:x", "--listen tcp:x: a port or backlog that is not a number"),
        (
            "tcp:1:backlog=many",
            "--listen tcp:1:backlog=many: a port or backlog that is not a number",
        ),
        # Twisted's parser reports these as a Python TypeError about _parseTCP().
        (
            "tcp:1143:interface=::1",
            "--listen tcp:1143:interface=::1: parameter 'interface' given twice "
            "(a ':' inside a value is written '\\:', as in interface=\\:\\:1)",
        ),
        ("tcp:1143:foo=bar", "--listen tcp:1143:foo=bar: unknown parameter 'foo'"),
        ("tcp", "--listen tcp: no port"),
    ],
)
def test_unusableDescriptionIsRefused(description, message):
    with pytest.raises(ListenerError) as e:
        listener(description)
    assert str(e.value) == message


@pytest.mark.parametrize(
    ("description", "loopback"),
    [
        ("tcp:1143:interface=127.0.0.1", True),
        ("tcp:1143:interface=127.1.2.3", True),
        ("tcp6:1143:interface=\\:\\:1", True),
        ("tcp:1143:interface=\\:\\:ffff\\:127.0.0.1", True),
        ("tcp:1143:interface=localhost", True),
        ("unix:/run/imapreferral.sock", True),
        ("tcp:1143", False),  # every address
        ("tcp6:1143", False),
        ("tcp:1143:interface=0.0.0.0", False),
        ("tcp6:1143:interface=\\:\\:", False),
        ("tcp:1143:interface=192.0.2.1", False),
        ("tcp:1143:interface=mail.example.com", False),
        # Behind HAProxy: there to be reached from elsewhere, whatever it binds.
        ("haproxy:tcp:1143:interface=127.0.0.1", False),
    ],
)
def test_loopbackOnly(description, loopback):
    assert isLoopbackOnly(listener(description)) is loopback


def test_probeFindsAPortInUse():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(ListenerError) as e:
            probeListeners([listener(f"tcp:{port}:interface=127.0.0.1", "listen-tls")])
    assert str(e.value) == f"--listen-tls tcp:{port}:interface=127.0.0.1: address already in use"


def test_probeFindsTwoListenersOnOnePort():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    first, second = listener(f"tcp:{port}"), listener(f"tcp:{port}:interface=127.0.0.1")
    with pytest.raises(ListenerError, match="address already in use"):
        probeListeners([first, second])


def test_probeLeavesFreePortsFree():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    probeListeners([listener(f"tcp:{port}:interface=127.0.0.1"), listener("tcp:0")])
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))


def test_probeFindsAUnixSocketInAMissingDirectory(tmp_path):
    path = tmp_path / "missing" / "imap.sock"
    with pytest.raises(ListenerError) as e:
        probeListeners([listener(f"unix:{path}")])
    assert str(e.value) == f"--listen unix:{path}: no such file or directory"


def test_probeLeavesNoUnixSocketBehind(tmp_path):
    path = tmp_path / "imap.sock"
    probeListeners([listener(f"unix:{path}")])
    assert not path.exists()


def test_probeLeavesAnExistingUnixPathToTwisted(tmp_path):
    path = tmp_path / "imap.sock"
    path.write_text("")
    probeListeners([listener(f"unix:{path}")])
    assert path.read_text() == ""


def test_listenerThatCannotBindStopsWithOneLine():
    """What L{probeListeners} cannot foresee (a race) is still one line, no traceback."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        spec = listener(f"tcp:{port}:interface=127.0.0.1")
        service = ListenerService(
            spec, endpoints.serverFromString(reactor, spec.endpoint), Factory()
        )
        with pytest.raises(SystemExit) as e:
            service.privilegedStartService()
    assert e.value.code == (
        f"imapreferral: --listen tcp:{port}:interface=127.0.0.1: address already in use"
    )
