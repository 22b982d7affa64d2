"""
Several server processes on the same listening sockets (C{--workers N}).

One Python process runs on one core; Dovecot runs several imap-login
processes. The first process listens, then starts N-1 copies of itself
that adopt the same sockets (C{reactor.adoptStreamPort}) and accept from
the same queues (told how many by L{ADOPT_VARIABLE}). Each worker keeps its own connection counts and
authentication penalty, so per-IP limits apply per worker. Workers stop
with the first process, and die with it if it is killed (Linux
C{PR_SET_PDEATHSIG}).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from zope.interface import implementer

from imapreferral.reload import IReloadable

_log = Logger()

#: The first inherited socket's descriptor in a worker.
FIRST_FD = 3

#: Tells a worker how many sockets it inherits. An environment variable, not
#: an option: it is internal, and options show in C{--help}.
ADOPT_VARIABLE = "IMAPREFERRAL_ADOPT_LISTENERS"


def adoptedListenerCount(environ: Mapping[str, str]) -> int:
    """
    How many listening sockets this process inherits from the first one (0:
    it is the first, and listens itself).

    @raise ValueError: for a value that is not a whole number.
    """
    value = environ.get(ADOPT_VARIABLE, "0")
    if not value.isascii() or not value.isdigit():
        raise ValueError(f"{ADOPT_VARIABLE}={value!r} is not a whole number")
    return int(value)


def dieWithParent() -> None:
    """In a worker: get SIGTERM when the first process dies (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def adoptListeners(reactor: Any, factories: Sequence[Any]) -> list[IListeningPort]:
    """In a worker: accept on inherited sockets C{3, 4, ...}, one per factory."""
    ports = []
    for offset, factory in enumerate(factories):
        fd = FIRST_FD + offset
        family = socket.socket(fileno=os.dup(fd)).family
        ports.append(reactor.adoptStreamPort(fd, family, factory))
        os.close(fd)
    return ports


def workerArguments(argv: Sequence[str]) -> list[str]:
    """
    The command line of a worker: this twistd's own, not daemonised, with
    no pid file and no C{--workers}.
    """
    cleaned: list[str] = []
    skip = False
    for a in argv[1:]:  # drop --workers=N and --workers N
        if skip:
            skip = False
        elif a == "--workers":
            skip = True
        elif not a.startswith("--workers="):
            cleaned.append(a)
    return [
        sys.executable, "-c", WORKER_MAIN, "-n", "--pidfile=", *cleaned,
    ]  # fmt: skip


#: A worker's program: twistd, ignoring C{SIGHUP} (whose default ends the
#: process) until its L{imapreferral.reload.Reloader} takes the signal over,
#: so that a reload passed on while it is still starting does not kill it.
WORKER_MAIN = (
    "import signal; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
    "from twisted.scripts.twistd import run; run()"
)


class _Worker(ProcessProtocol):
    def __init__(self) -> None:
        self.ended: Deferred[None] = Deferred()

    def processEnded(self, reason: object) -> None:
        self.ended.callback(None)


@implementer(IReloadable)
class WorkerProcesses(Service):
    """
    Starts N-1 workers once the first process's ports are listening, passes
    C{SIGHUP} on to them (L{reload}), and stops them (SIGTERM, then
    SIGKILL if they take longer than C{stopWithin}) when the first process
    stops.

    @ivar listeners: The first process's listener services, in order; they
        are started before this service.
    """

    def __init__(
        self,
        reactor: Any,
        count: int,
        listeners: Sequence[Any],
        argv: Sequence[str],
        stopWithin: float = 10.0,
    ) -> None:
        self.reactor = reactor
        self.count = count
        self.listeners = list(listeners)
        self.argv = list(argv)
        self.stopWithin = stopWithin
        self._workers: list[tuple[Any, _Worker]] = []

    def startService(self) -> None:
        super().startService()
        # StreamServerEndpointService keeps its port's Deferred privately.
        ports = [listener._waitingForPort for listener in self.listeners]
        DeferredList(ports, fireOnOneErrback=True, consumeErrors=True).addCallback(
            self._spawn
        ).addErrback(lambda f: _log.failure("not starting workers", f))

    def _spawn(self, results: list[tuple[bool, IListeningPort]]) -> None:
        if not self.running:
            return
        fds = [port.fileno() for _, port in results]  # type: ignore[attr-defined]
        childFDs: dict[int, Any] = {0: "w", 1: 1, 2: 2}
        for offset, fd in enumerate(fds):
            childFDs[FIRST_FD + offset] = fd
        args = workerArguments(self.argv)
        env = dict(os.environ, **{ADOPT_VARIABLE: str(len(fds))})
        for _ in range(self.count - 1):
            worker = _Worker()
            process = self.reactor.spawnProcess(
                worker, sys.executable, args, env=env, childFDs=childFDs
            )
            self._workers.append((process, worker))
        _log.info("started {n} more worker processes", n=self.count - 1)

    def signalWorkers(self, name: str) -> None:
        """Send the running workers a signal."""
        for process, worker in self._workers:
            if not worker.ended.called:
                try:
                    process.signalProcess(name)
                except Exception:
                    continue

    def stopService(self) -> Deferred[None]:
        super().stopService()
        waits = []
        for process, worker in self._workers:
            if not worker.ended.called:
                try:
                    process.signalProcess("TERM")
                except Exception:
                    continue
                killer = self.reactor.callLater(self.stopWithin, _kill, process)
                worker.ended.addBoth(lambda _, k=killer: k.cancel() if k.active() else None)
                waits.append(worker.ended)
        self._workers = []
        return DeferredList(waits).addCallback(lambda _: None)

    def reload(self) -> None:
        """Each worker re-reads its configuration too (the same C{SIGHUP})."""
        self.signalWorkers("HUP")


def _kill(process: Any) -> None:
    try:
        process.signalProcess("KILL")
    except Exception:
        pass
