"""
Running as a systemd service: the example units pass C{systemd-analyze
verify} and stay within an exposure of 2.0 in C{systemd-analyze security},
and the server serves a login on a listening socket inherited the way
systemd passes it (C{LISTEN_FDS}, C{LISTEN_PID}, C{LISTEN_FDNAMES}, fd 3).
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_tap import TWISTD, _twistdRefusal

from imapreferral import tap

EXAMPLES = Path(__file__).parent.parent / "examples"
UNITS = ["imapreferral.socket", "imapreferral.service", "imapreferral-standalone.service"]
SERVICES = [unit for unit in UNITS if unit.endswith(".service")]
ANALYZE = shutil.which("systemd-analyze")

#: Where the units expect the virtualenv; the tests put this one there.
UNIT_BIN = "/opt/imapreferral/bin/"


@pytest.fixture(scope="module")
def units(tmp_path_factory) -> Path:
    """The example units, their twistd this virtualenv's (verify checks it exists)."""
    if ANALYZE is None:
        if os.environ.get("IMAPREFERRAL_REQUIRE_SYSTEMD"):
            pytest.fail("systemd-analyze is required (apt-get install systemd) but not on PATH")
        pytest.skip("systemd-analyze not on PATH (Debian/Ubuntu: apt-get install systemd)")
    directory = tmp_path_factory.mktemp("units")
    bindir = str(Path(sys.executable).parent) + "/"
    for unit in UNITS:
        text = (EXAMPLES / unit).read_text()
        assert UNIT_BIN in text or unit.endswith(".socket")
        (directory / unit).write_text(text.replace(UNIT_BIN, bindir))
    return directory


def _analyze(units: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run(
        [ANALYZE, *args], capture_output=True, text=True, timeout=60, cwd=units, check=False
    )


def test_unitsPassSystemdAnalyzeVerify(units):
    """No error and no warning (an unknown key is only a warning)."""
    done = _analyze(units, "verify", *UNITS)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr


@pytest.mark.parametrize("service", SERVICES)
def test_serviceExposureIsAtMost2(units, service):
    done = _analyze(units, "security", "--offline=true", "--threshold=20", service)
    assert done.returncode == 0, done.stdout[-400:]


def test_socketActivatedServiceHasNoCapability():
    text = (EXAMPLES / "imapreferral.service").read_text()
    assert "\nCapabilityBoundingSet=\n" in text and "CAP_NET_BIND_SERVICE" not in text


def test_socketUnitPassesTheSocketsTheServiceAdopts():
    """The service's systemd: listeners are the socket unit's, in order."""
    listens = [
        line.split("=", 1)[1]
        for line in (EXAMPLES / "imapreferral.socket").read_text().splitlines()
        if line.startswith("ListenStream=")
    ]
    assert listens == ["0.0.0.0:143", "[::]:143", "0.0.0.0:993", "[::]:993"]
    service = (EXAMPLES / "imapreferral.service").read_text()
    for index, (option, domain) in enumerate(
        [("listen", "INET"), ("listen", "INET6"), ("listen-tls", "INET"), ("listen-tls", "INET6")]
    ):
        assert f"--{option} systemd:domain={domain}:index={index} " in service


#: Puts the socket at fd 3 and names this pid in LISTEN_PID, then execs the
#: command (same pid), as systemd does between fork and exec.
_AS_SYSTEMD = """\
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[2], sys.argv[2:])
"""


def _socketActivated(listening: socket.socket, *args: str) -> subprocess.Popen:
    """
    twistd as systemd starts a socket-activated service: the socket as fd 3,
    C{LISTEN_FDS=1}, C{LISTEN_FDNAMES} and C{LISTEN_PID} its own pid.
    """
    fd = listening.fileno()
    env = dict(
        os.environ,
        PYTHONPATH=str(Path(__file__).parent.parent),
        LISTEN_FDS="1",
        LISTEN_FDNAMES="imapreferral.socket",
    )
    command = [*TWISTD, "-n", "--pidfile=", "imapreferral", *args]
    return subprocess.Popen(
        [sys.executable, "-c", _AS_SYSTEMD, str(fd), *command],
        pass_fds=(fd,), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


def test_serverServesALoginOnASocketPassedAsSystemdDoes(tmp_path):
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(16)
        port = listening.getsockname()[1]
        proc = _socketActivated(
            listening,
            "--listen", "systemd:domain=INET:index=0",
            "--passdb", f"passwd-file:{tap.EXAMPLE_PASSWD}",
        )  # fmt: skip
    try:
        # The socket listened before twistd started: no wait for it.
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            f = sock.makefile("rb")
            assert f.readline().startswith(b"* OK [CAPABILITY IMAP4rev1 ")
            sock.sendall(b"a LOGIN refnl pass\r\n")
            assert f.readline() == (
                b"a NO [REFERRAL imap://refnl;AUTH=PLAIN@imap2.example.com/] "
                b"Try this server instead.\r\n"
            )
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0].decode()
    assert "imapreferral serving systemd:domain=INET:index=0" in out
    assert (
        f"login remote=127.0.0.1 local=127.0.0.1:{port} mech=PLAIN client=unknown: referred" in out
    )


def _waitForLines(proc: subprocess.Popen, text: str, count: int, seconds: float = 30) -> str:
    """The output until C{text} has appeared C{count} times; fails on a refusal."""
    out = b""
    deadline = time.monotonic() + seconds
    while out.decode(errors="replace").count(text) < count:
        shown = out.decode(errors="replace")
        assert "imapreferral: --listen" not in shown, shown
        remaining = deadline - time.monotonic()
        assert remaining > 0 and proc.poll() is None, shown
        if select.select([proc.stdout], [], [], remaining)[0]:
            out += os.read(proc.stdout.fileno(), 65536)
    return out.decode(errors="replace")


def test_workersShareASocketPassedBySystemd(tmp_path):
    """
    A worker adopts its first process's sockets; it must not look for
    systemd's (it has none: they were the first process's): else every
    worker exited at start and one process served alone.
    """
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(16)
        port = listening.getsockname()[1]
        proc = _socketActivated(
            listening,
            "--listen", "systemd:domain=INET:index=0", "--workers", "2",
            "--passdb", f"passwd-file:{tap.EXAMPLE_PASSWD}",
        )  # fmt: skip
    try:
        _waitForLines(proc, "imapreferral serving systemd:domain=INET:index=0", 2)
        for _ in range(4):
            with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
                f = sock.makefile("rb")
                f.readline()
                sock.sendall(b"a LOGIN refnl pass\r\n")
                assert f.readline().startswith(b"a NO [REFERRAL imap://refnl;")
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0].decode()
    assert "imapreferral: " not in out and "Traceback" not in out


def test_systemdListenerWithoutItsSocketIsOneLine(tmp_path):
    """Started by hand, not by its .socket unit: said so, not an IndexError."""
    status, out, err = _twistdRefusal(
        "--listen", "systemd:domain=INET:index=0", "--passdb",
        f"passwd-file:{tap.EXAMPLE_PASSWD}", cwd=str(tmp_path),
    )  # fmt: skip
    assert (status, out, err) == (
        1,
        "",
        "imapreferral: --listen systemd:domain=INET:index=0: systemd passed no socket with "
        "that index (LISTEN_FDS, LISTEN_FDNAMES): start the service through its .socket unit\n",
    )


# Review of issue 12


@pytest.mark.parametrize("service", SERVICES)
def test_systemctlReloadSendsSighup(service):
    """
    The README's certificate renewal hook is `systemctl reload`: without
    ExecReload= systemd refuses it ("Job type reload is not applicable").
    """
    lines = (EXAMPLES / service).read_text().splitlines()
    reloads = [line.split("=", 1)[1] for line in lines if line.startswith("ExecReload=")]
    assert len(reloads) == 1, "no ExecReload="
    words = reloads[0].split()
    assert words[0].endswith("kill") and "-HUP" in words and words[-1] == "$MAINPID", reloads
