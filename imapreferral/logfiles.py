"""
The log file, shared by every process of C{--workers}.

twistd picks its log observer after the service is made: L{installIn}
gives it ours as the application's C{ILogObserver}, writing where twistd
would have written (C{--logfile}, C{-} or stdout with C{--nodaemon};
C{twistd.log} otherwise), when

  - the log is JSON lines (C{--log-format json}, L{imapreferral.jsonlog}),
    or
  - several processes write one file (C{--workers}): twistd's own
    C{LogFile} opens the file once, at its end, and writes at its own
    offset, so processes sharing it write over each other's lines. Ours
    (L{AppendingLogFile}) opens it with C{O_APPEND}: every line is one
    C{write(2)} that the kernel puts at the end, whoever wrote last.

Rotation is twistd's (C{SIGUSR1}, or past 1 MB), done by one process only:
the first (whose pid is in the pid file, the one logrotate signals). It
renames the file, opens a new one, and passes C{SIGUSR1} on to its workers,
which only reopen the file (L{Role.WORKER}): were they to rotate, each would
rename the file again. twistd's own C{--logger} still wins over ours.
"""

from __future__ import annotations

import enum
import os
import signal
import sys
from collections.abc import Callable
from typing import IO, Any

from twisted.logger import ILogObserver, textFileLogObserver
from twisted.python import logfile

from imapreferral.jsonlog import jsonFileLogObserver


class Role(enum.Enum):
    """Which process of the server this is, for its log file."""

    #: The only process: rotates its file.
    ALONE = "alone"
    #: The first process of C{--workers}: rotates, then has workers reopen.
    FIRST = "first"
    #: A worker: never rotates, reopens when the first process says so.
    WORKER = "worker"


class AppendingLogFile(logfile.LogFile):
    """
    twistd's rotating C{LogFile}, opened with C{O_APPEND} so that several
    processes can write it, rotating on the size of the file (everyone's
    lines), not on what this process wrote.

    @ivar rotated: Called after each rotation (to tell the workers).
    """

    rotated: Callable[[], None] | None = None

    def _openFile(self) -> None:
        self.closed = False
        if self.defaultMode is not None and not os.path.exists(self.path):
            oldUmask = os.umask(0o777)  # as twistd's: created with no permission, then chmod
            try:
                self._file = open(self.path, "ab", 0)
            finally:
                os.umask(oldUmask)
        else:
            self._file = open(self.path, "ab", 0)
        if self.defaultMode is not None:
            try:
                os.chmod(self.path, self.defaultMode)
            except OSError:
                pass
        self.size = self._file.tell()

    def shouldRotate(self) -> bool:
        if not self.rotateLength:
            return False
        self.size = os.fstat(self._file.fileno()).st_size
        return self.size >= self.rotateLength

    def rotate(self) -> None:
        super().rotate()
        if self.rotated is not None:
            self.rotated()


def twistdLogFile(serverOptions: Any, role: Role = Role.ALONE) -> IO[str] | AppendingLogFile:
    """
    Where twistd would write its text log, from its own options (as
    C{twisted.scripts._twistd_unix.UnixAppLogger} decides it), opened to
    append; C{SIGUSR1} rotates it (reopens it, in a worker).
    """
    name = None if serverOptions is None else twistdLogFileName(serverOptions)
    if name is None:
        return sys.stdout
    opened = AppendingLogFile.fromFullPath(
        name, rotateLength=None if role is Role.WORKER else 1000000
    )
    # A worker ignores SIGUSR1 until now (workers.workerMain): ours.
    if role is Role.WORKER or not signal.getsignal(signal.SIGUSR1):
        onSignal = opened.reopen if role is Role.WORKER else opened.rotate

        def received(signum: int, frame: object) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(onSignal)  # type: ignore[attr-defined]

        signal.signal(signal.SIGUSR1, received)
    return opened


def isSharedFile(serverOptions: Any) -> bool:
    """Whether twistd's options send the text log to a file (not stdout, not syslog)."""
    if serverOptions is None or serverOptions.get("syslog"):
        return False
    return twistdLogFileName(serverOptions) is not None


def twistdLogFileName(serverOptions: Any) -> str | None:
    """The file twistd logs to, or L{None} for stdout."""
    name = serverOptions.get("logfile")
    if name == "-" or (serverOptions.get("nodaemon") and not name):
        return None
    return name or "twistd.log"


def installIn(
    application: Any,
    serverOptions: Any,
    json: bool,
    role: Role = Role.ALONE,
    rotated: Callable[[], None] | None = None,
) -> None:
    """
    Give twistd our log observer for C{application} when it needs one (see
    the module docstring): JSON lines, or twistd's text lines appended to a
    file several processes share.

    @param serverOptions: twistd's options (C{--logfile}, C{--nodaemon}).
    @param json: Whether to write JSON lines rather than text.
    @param role: Which process this is.
    @param rotated: Called after the first process rotated its file.
    """
    if not json and (role is Role.ALONE or not isSharedFile(serverOptions)):
        return  # twistd's own is right
    out = twistdLogFile(serverOptions, role)
    if rotated is not None and isinstance(out, AppendingLogFile):
        out.rotated = rotated
    observer = jsonFileLogObserver(out) if json else textFileLogObserver(out)
    application.setComponent(ILogObserver, observer)
