"""
A real C{twistd imapreferral} in a subprocess, for signal tests: its log
goes to a file that the test reads while it runs (bounded polling; the
process is another clock we cannot inject), and it is always stopped.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from test_tap import TWISTD, _freePort


class Twistd:
    """
    One server process.

    @ivar ports: Name to loopback port, for the listeners it was given
        (C{{name}} in an argument becomes that port).
    """

    def __init__(
        self,
        directory: Path,
        *args: str,
        ports: tuple[str, ...] = ("imap",),
        newSession: bool = False,
    ) -> None:
        """
        @param newSession: Run it in a session (and process group) of its
            own, as a terminal runs a command, so that it can be signalled
            as a group.
        """
        self.ports = {name: _freePort() for name in ports}
        self.logPath = directory / "twistd.log"
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent))
        with open(self.logPath, "wb") as log:
            self.proc = subprocess.Popen(
                [*TWISTD, "-n", "--pidfile=", "imapreferral",
                 *(arg.format(**self.ports) for arg in args)],
                cwd=str(directory), env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=newSession,
            )  # fmt: skip
        self._waitFor(self._listening, "listening")

    def _listening(self) -> bool:
        for port in self.ports.values():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
            except OSError:
                return False
        return True

    def log(self) -> str:
        return self.logPath.read_text(errors="replace")

    def _waitFor(self, ready: object, what: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not ready():  # type: ignore[operator]
            assert self.proc.poll() is None, f"twistd exited waiting for {what}:\n{self.log()}"
            assert time.monotonic() < deadline, f"twistd: no {what} in {timeout} s:\n{self.log()}"
            time.sleep(0.05)

    def waitForLog(self, text: str, count: int = 1, timeout: float = 20) -> str:
        """Wait until C{text} is in the log C{count} times; the log."""
        self._waitFor(lambda: self.log().count(text) >= count, repr(text), timeout)
        return self.log()

    def reload(self) -> str:
        """SIGHUP, and wait for the reload to be done; the log."""
        done = self.log().count("SIGHUP: reload done")
        self.proc.send_signal(signal.SIGHUP)
        return self.waitForLog("SIGHUP: reload done", done + 1)

    def connect(self, name: str = "imap") -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.ports[name]), timeout=10)

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
