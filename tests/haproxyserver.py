"""
A real HAProxy for tests, started on loopback ports and stopped afterwards.

HAProxy is Debian's C{haproxy} package (CI installs it). Without it the
tests that need it are skipped, unless C{IMAPREFERRAL_REQUIRE_HAPROXY} is set
(CI sets it, so a missing install step fails instead of hiding).
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest
from twisted.internet import reactor
from twisted.internet.task import deferLater

import imapreferral

EXAMPLE_CONFIG = Path(imapreferral.__file__).parent / "examples" / "haproxy.cfg"
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp


def requireExecutable(name: str, package: str, path: str | None = None) -> str:
    """
    The program C{name} (on PATH, or on C{path}); without it, skip the
    test, or fail it when C{IMAPREFERRAL_REQUIRE_<NAME>} is set (as CI does).
    """
    executable = shutil.which(name) or (path and shutil.which(name, path=path))
    if not executable:
        why = f"{name} is not installed (Debian: apt-get install {package})"
        variable = f"IMAPREFERRAL_REQUIRE_{name.upper()}"
        if os.environ.get(variable):
            pytest.fail(f"{why} and {variable} is set")
        pytest.skip(why)
    return executable


def haproxyExecutable() -> str:
    """The C{haproxy} on PATH; skip (or fail, if required) without one."""
    return requireExecutable("haproxy", "haproxy")


def stopProcess(process: subprocess.Popen[bytes] | None, seconds: float = 5) -> None:
    """Terminate, wait a bounded time, then kill."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def freePort(host: str) -> int:
    """A port nobody listens on at C{host} right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def exampleConfig(replacements: Mapping[str, str]) -> str:
    """
    The shipped example with addresses replaced; each must occur exactly
    once, so the example cannot drift away from what the test runs.
    """
    text = EXAMPLE_CONFIG.read_text()
    for old, new in replacements.items():
        assert text.count(old) == 1, f"{old!r} should occur once in {EXAMPLE_CONFIG}"
        text = text.replace(old, new)
    return text


def _listening(host: str, port: int) -> bool:
    local = f"{struct.unpack('=I', socket.inet_aton(host))[0]:08X}:{port:04X}"
    with open("/proc/net/tcp") as table:
        return any(
            fields[1] == local and fields[3] == _LISTEN
            for fields in (line.split() for line in table)
        )


class HAProxy:
    """
    C{haproxy -f <config> -db} (foreground) in C{directory}; output goes to
    C{haproxy.log} there, shown by L{output} when a test fails.
    """

    def __init__(self, executable: str, config: str, directory: Path) -> None:
        self.executable = executable
        self.directory = directory
        self.configPath = directory / "haproxy.cfg"
        self.configPath.write_text(config)
        self.logPath = directory / "haproxy.log"
        self._process: subprocess.Popen[bytes] | None = None

    def output(self) -> str:
        return self.logPath.read_text() if self.logPath.exists() else ""

    async def start(self, listening: list[tuple[str, int]], attempts: int = 200) -> HAProxy:
        """
        Check the config, start HAProxy and wait, bounded and without
        blocking the reactor, until it listens on every C{(host, port)}.
        """
        check = subprocess.run(
            [self.executable, "-c", "-f", str(self.configPath)],
            capture_output=True,
            timeout=30,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        with open(self.logPath, "wb") as log:
            self._process = subprocess.Popen(
                [self.executable, "-f", str(self.configPath), "-db"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        for _ in range(attempts):
            if self._process.poll() is not None:
                raise AssertionError(f"haproxy exited at start:\n{self.output()}")
            if all(_listening(host, port) for host, port in listening):
                return self
            await deferLater(reactor, 0.025, lambda: None)
        self.stop()
        raise AssertionError(f"haproxy is not listening on {listening}:\n{self.output()}")

    def stop(self) -> None:
        process, self._process = self._process, None
        stopProcess(process)
