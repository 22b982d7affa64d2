"""
A proxied session on an implicit-TLS listener ends with a TLS close_notify
to the client whichever side ends it, never a bare TCP close (a truncation
a TLS client must treat as an attack). A real twistd with
C{--listen-tls}, a Python C{ssl} client that refuses ragged EOFs, and real
backends: Dovecot, and a backend that vanishes mid-IDLE.
"""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest
from dovecotbackend import USERS, startDovecot
from test_tap import _connectWhenListening, _freePort, _twistd
from tlscerts import makeCertificate


@pytest.fixture(scope="module")
def dovecot():
    backend = startDovecot()
    yield backend
    backend.stop()


class VanishingBackend:
    """
    A backend on loopback that greets, accepts any LOGIN, and on IDLE says
    C{+ idling} and then drops the connection (a crash or a kill).
    """

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(30)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(30)
            reader = conn.makefile("rb")
            conn.sendall(b"* OK [CAPABILITY IMAP4rev1 ID] vanishing ready\r\n")
            for line in iter(reader.readline, b""):
                tag, _, command = line.rstrip(b"\r\n").partition(b" ")
                if command.upper().startswith(b"IDLE"):
                    conn.sendall(b"+ idling\r\n")
                    conn.shutdown(socket.SHUT_RDWR)
                    return
                conn.sendall(tag + b" OK [CAPABILITY IMAP4rev1 IDLE] logged in\r\n")

    def close(self) -> None:
        self.sock.close()
        self.thread.join(10)


def _front(tmp_path: Path, passwdLine: str):
    """twistd with one implicit-TLS listener; the process and the TLS port."""
    certificate, key = makeCertificate(tmp_path)
    passwd = tmp_path / "users.passwd"
    passwd.write_text(passwdLine + "\n")
    plain, tls = _freePort(), _freePort()
    proc = _twistd(
        "--listen", f"tcp:{plain}:interface=127.0.0.1",
        "--listen-tls", f"tcp:{tls}:interface=127.0.0.1",
        "--tls-cert", str(certificate), "--tls-key", str(key),
        "--passdb", f"passwd-file:{passwd}", "--proxy-max-reconnects", "0",
        cwd=str(tmp_path),
    )  # fmt: skip
    _connectWhenListening(proc, plain).close()
    return proc, tls


def _tlsClient(port: int) -> ssl.SSLSocket:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return context.wrap_socket(raw, suppress_ragged_eofs=False)


def _readToTheEnd(client: ssl.SSLSocket) -> bytes:
    """
    Everything until the server's close_notify; a TCP close without one
    raises C{ssl.SSLEOFError} here (ragged EOFs are not suppressed).
    """
    received = b""
    while chunk := client.recv(65536):
        received += chunk
    return received


def _login(client: ssl.SSLSocket, password: str) -> bytes:
    client.recv(4096)  # greeting
    client.sendall(b"a LOGIN alice " + password.encode() + b"\r\n")
    reply = b""
    while b"a OK" not in reply and b"a NO" not in reply:
        chunk = client.recv(4096)
        assert chunk, reply
        reply += chunk
    return reply


def test_backendLogoutEndsTheTLSClientWithCloseNotify(tmp_path, dovecot):
    password = USERS["alice"]
    proc, port = _front(
        tmp_path, f"alice:{{PLAIN}}{password}::::::proxy host=127.0.0.1 port={dovecot.port}"
    )
    try:
        with _tlsClient(port) as client:
            assert b"a OK [CAPABILITY IMAP4rev1 " in _login(client, password)
            client.sendall(b"z LOGOUT\r\n")
            rest = _readToTheEnd(client)
        assert b"* BYE " in rest and b"z OK Logout completed" in rest
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


def test_backendVanishingMidIdleEndsTheTLSClientWithCloseNotify(tmp_path):
    backend = VanishingBackend()
    proc, port = _front(
        tmp_path, f"alice:{{PLAIN}}secret::::::proxy host=127.0.0.1 port={backend.port}"
    )
    try:
        with _tlsClient(port) as client:
            assert b"a OK [CAPABILITY IMAP4rev1 IDLE] " in _login(client, "secret")
            client.sendall(b"i IDLE\r\n")
            assert _readToTheEnd(client) == b"+ idling\r\n"
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
        backend.close()
