"""
File descriptors against C{--max-connections}.

Each client session holds a socket. With C{ulimit -n 1024} and the default
2000 connections, clients past about 1,000 were dropped unanswered while
Twisted logged C{EMFILE} for each. At start-up we raise the soft
C{RLIMIT_NOFILE} to the hard limit (no privilege needed) and, if the
connections still do not fit, serve fewer: a client past the limit then
gets C{* BYE [UNAVAILABLE]} instead of nothing.
"""

from __future__ import annotations

import resource
from typing import Protocol

from twisted.logger import Logger

_log = Logger()


class _Limited(Protocol):
    maxTotal: int


#: Descriptors one client session holds: its socket. Proxying will add the
#: backend connection, making it 2.
DESCRIPTORS_PER_SESSION = 1

#: Descriptors kept for everything else: listeners, log files, SQL
#: connections, the reactor's own (epoll, waker), worker pipes, libraries.
RESERVED_DESCRIPTORS = 64


def connectionsThatFit(
    maxConnections: int,
    descriptorLimit: int | None,
    perSession: int = DESCRIPTORS_PER_SESSION,
    reserved: int = RESERVED_DESCRIPTORS,
) -> int:
    """
    How many connections to allow under C{descriptorLimit}.

    @param maxConnections: What was asked for; 0 means no limit.
    @param descriptorLimit: The soft C{RLIMIT_NOFILE}, L{None} for unlimited.
    @return: C{maxConnections} if it fits, else the most that fit (at least
        1). 0 (no limit) stays 0 only without a descriptor limit.
    """
    if descriptorLimit is None:
        return maxConnections
    fit = max(1, (descriptorLimit - reserved) // perSession)
    if maxConnections and maxConnections <= fit:
        return maxConnections
    return fit


def raiseDescriptorLimit() -> int | None:
    """
    Raise the soft C{RLIMIT_NOFILE} as far as the hard limit lets us.

    @return: The soft limit now in force, L{None} if unlimited.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass  # e.g. an unlimited hard limit the kernel caps lower (macOS)
    return None if soft == resource.RLIM_INFINITY else soft


def fitConnectionLimit(limiter: _Limited) -> None:
    """
    Raise the descriptor limit, then lower C{limiter.maxTotal} (the
    C{--max-connections} of a L{imapreferral.limits.ConnectionLimiter}) to
    what fits, with one warning saying so. Run once, at start-up.
    """
    limit = raiseDescriptorLimit()
    wanted = limiter.maxTotal
    fitting = connectionsThatFit(wanted, limit)
    if fitting != wanted:
        limiter.maxTotal = fitting
        _log.warn(
            "--max-connections {wanted} does not fit in {limit} file descriptors "
            "(RLIMIT_NOFILE hard limit): serving at most {fitting} connections; raise the "
            "limit (ulimit -n, systemd LimitNOFILE=) to serve more",
            wanted=wanted or "0 (no limit)",
            limit=limit,
            fitting=fitting,
        )
