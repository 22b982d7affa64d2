"""
Several server processes on the same listening sockets (C{--workers N}).

One Python process runs on one core; Dovecot runs several imap-login
processes. The first process listens, then starts N-1 copies of itself
that adopt the same sockets (C{reactor.adoptStreamPort}) and accept from
the same queues (told how many by L{ADOPT_VARIABLE}). Each worker keeps its own connection counts and
authentication penalty, so per-IP limits apply per worker. Workers stop
with the first process, and die with it if it is killed (Linux
C{PR_SET_PDEATHSIG}).

The first process speaks for them all; its signals are passed on so that
no worker takes one request for two:

  - C{SIGTERM}/C{SIGINT} (stop, with the grace): each worker gets
    L{DRAIN_SIGNAL}, which only ever means "stop, with the grace"; a worker
    already stopping ignores it. A second C{SIGTERM}/C{SIGINT} ("hurry")
    is passed on as C{SIGTERM}.
  - C{SIGHUP} (reload) as it is; C{SIGUSR1} (the log file was rotated) as
    it is, a worker reopening its file (L{imapreferral.logfiles}).

Workers run in their own process group, so a terminal's Ctrl-C reaches
the first process alone (systemd: C{KillMode=mixed}, see C{examples/}).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ReactorNotRunning
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


#: What the first process sends its workers to stop them with the grace.
DRAIN_SIGNAL = signal.SIGUSR2

#: A worker's program (L{workerMain}).
WORKER_MAIN = "from imapreferral.workers import workerMain; workerMain()"


def workerMain() -> None:
    """
    A worker: twistd, in its own process group (a terminal's Ctrl-C is for
    the first process, which passes it on), ignoring C{SIGHUP} and
    C{SIGUSR1} (whose default ends the process) until its
    L{imapreferral.reload.Reloader} and its log file take them over, so
    that a reload or a log rotation passed on while it is still starting
    does not kill it. L{DRAIN_SIGNAL} may end it while it starts: it has
    accepted nothing yet.
    """
    try:
        os.setpgid(0, 0)
    except OSError:  # a sandbox's system call filter: stay in the group
        pass
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    from twisted.scripts.twistd import run

    run()


def drainOnSignal(reactor: Any) -> None:
    """
    In a worker: L{DRAIN_SIGNAL} stops the server as C{SIGTERM} does (the
    grace kept), and is ignored once it is stopping: never "hurry" (see
    L{imapreferral.shutdown.hurryOnSignal}).
    """

    def stop() -> None:
        try:
            reactor.stop()
        except ReactorNotRunning:
            pass  # stopping already (the operator signalled us too)

    def received(signum: int, frame: FrameType | None) -> None:
        reactor.callFromThread(stop)

    signal.signal(DRAIN_SIGNAL, received)


class _Worker(ProcessProtocol):
    def __init__(self) -> None:
        self.ended: Deferred[None] = Deferred()

    def processEnded(self, reason: object) -> None:
        self.ended.callback(None)


@implementer(IReloadable)
class WorkerProcesses(Service):
    """
    Starts N-1 workers once the first process's ports are listening, passes
    C{SIGHUP} on to them (L{reload}), has them reopen the log file
    (L{reopenLogs}), and stops them (L{DRAIN_SIGNAL}; C{SIGTERM} to
    L{hurry}; C{SIGKILL} if they take longer than C{stopWithin}) when the
    first process stops.

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
        self._stopping: list[tuple[Any, _Worker]] = []

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

    def signalWorkers(self, name: str | int) -> None:
        """Send the running workers a signal (C{"HUP"}, C{"TERM"}, ... or a number)."""
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
                    process.signalProcess(int(DRAIN_SIGNAL))
                except Exception:
                    continue
                killer = self.reactor.callLater(self.stopWithin, _kill, process)
                worker.ended.addBoth(lambda _, k=killer: k.cancel() if k.active() else None)
                waits.append(worker.ended)
        self._stopping = [w for w in self._workers if not w[1].ended.called]
        self._workers = []
        return DeferredList(waits).addCallback(lambda _: None)

    def hurry(self) -> None:
        """The operator asked twice: the workers stopping end their grace too."""
        for process, worker in self._stopping:
            if not worker.ended.called:
                try:
                    process.signalProcess("TERM")
                except Exception:
                    continue

    def reopenLogs(self) -> None:
        """The first process rotated the log file: the workers write the new one."""
        self.signalWorkers(int(signal.SIGUSR1))

    def reload(self) -> None:
        """Each worker re-reads its configuration too (the same C{SIGHUP})."""
        self.signalWorkers("HUP")


def _kill(process: Any) -> None:
    try:
        process.signalProcess("KILL")
    except Exception:
        pass
