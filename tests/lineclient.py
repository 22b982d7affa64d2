"""
A blocking IMAP client for tests that drive a twistd subprocess: one line
per read, LOGIN with the name as a literal (any bytes), from a chosen
loopback source address.
"""

from __future__ import annotations

import socket
import time


class LineClient:
    """
    @param wait: Seconds to keep trying to connect while the server starts.
    """

    def __init__(self, port: int, source: str = "127.0.0.1", wait: float = 0) -> None:
        deadline = time.monotonic() + wait
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", port), 10, (source, 0))
                break
            except OSError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)
        self.file = self.sock.makefile("rb")
        self.greeting = self.line()

    def line(self) -> bytes:
        return self.file.readline()

    def command(self, data: bytes) -> bytes:
        self.sock.sendall(data + b"\r\n")
        return self.line()

    def login(self, tag: bytes, name: bytes, password: bytes) -> bytes:
        assert self.command(tag + b" LOGIN {%d}" % len(name)).startswith(b"+ ")
        return self.command(name + b" " + password)

    def close(self) -> None:
        self.file.close()
        self.sock.close()
