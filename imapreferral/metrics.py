"""
Prometheus metrics (C{--metrics ENDPOINT}): what an admin asks while users
move, "how many are still referred or proxied, and is anything failing?".

Nothing on the login path knows about Prometheus:

  - Counters come from the log events the server writes anyway, read by a
    log observer (L{ServerMetrics.observe}): the one line per login
    (L{imapreferral.login.logline}: C{result}, C{referralHost}, C{durationMs})
    and the proxy lines (L{imapreferral.imap.proxying.logProxy}).
  - What is state, not an event, is read from the objects that hold it when
    C{/metrics} is scraped (L{ServerMetrics.refresh}): open connections and
    limit hits (L{ConnectionLimiter}), proxied sessions (the factory's
    relays), addresses under penalty (L{AuthPenalty}), the hashing queue
    (L{SchemeVerifier}), whether each passdb answers.
  - Passdb lookup latency is the one hook: L{PassdbChecker.lookupTimed}.

With C{--workers N} every process counts for itself; prometheus_client's
multiprocess mode sums them. The first process makes a private directory
(L{MULTIPROC_VARIABLE}) before it starts its workers, which inherit it;
every process writes its values there (state every L{SAMPLE_INTERVAL}
seconds, events at once) and the first alone serves C{/metrics}, reading
them all. The directory goes when the server stops.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter as Tally
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.twisted import MetricsResource
from twisted.application.service import MultiService
from twisted.internet import endpoints
from twisted.internet.task import LoopingCall
from twisted.logger import globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from imapreferral.imap import proxying
from imapreferral.interfaces import IPassdb
from imapreferral.listeners import Listener, ListenerService
from imapreferral.login import logline
from imapreferral.login.checker import PassdbChecker
from imapreferral.passdbs import PasswdFilePassdb, SQLPassdb, StaticPassdb
from imapreferral.passdbs.cache import CachedPassdb

#: prometheus_client's multiprocess directory, passed to the workers.
MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
#: Seconds between a worker's writes of its state (gauges, limit hits).
SAMPLE_INTERVAL = 1.0

#: The login line's C{result} (L{logline.describeOutcome}) to the C{outcome}
#: label; anything else counts as C{other}, so the label set stays fixed.
OUTCOMES = {
    "logged in": "logged_in",
    "logged in with referral": "logged_in",
    "referred": "referred",
    "proxying": "proxied",
    "proxied-instead-of-referral": "proxied_instead_of_referral",
    "authentication failed": "failed",
    "temporary failure": "unavailable",
    "login disabled": "disabled",
    "plaintext authentication refused without TLS": "privacy_refused",
    "authorization refused": "authorization_refused",
}
#: A proxy line's C{event} to the backend login's C{result} label.
BACKEND_RESULTS = {
    "proxy started": "ok",
    "proxy failed": "failed",
    "proxy client gone": "client_gone",
}
#: The limits L{ConnectionLimiter.hits} counts, by option name.
LIMITS = (
    "max-connections",
    "max-connections-per-ip",
    "max-bad-commands",
    "max-auth-failures",
    "preauth-idle-timeout",
    "preauth-lifetime",
)
#: Seconds: from a passwd-file lookup (microseconds) to an SQL timeout.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

_LOGIN_NAMESPACE = logline.__name__
_PROXY_NAMESPACE = proxying.__name__


def passdbCheckers(checker: Any) -> list[PassdbChecker]:
    """The L{PassdbChecker}s in the server's checker (alone, or in a L{CheckerChain})."""
    if isinstance(checker, PassdbChecker):
        return [checker]
    return [c for c in getattr(checker, "checkers", ()) if isinstance(c, PassdbChecker)]


def _behindCache(passdb: IPassdb) -> IPassdb:
    return passdb.passdb if isinstance(passdb, CachedPassdb) else passdb


def passdbLabel(passdb: IPassdb) -> str:
    """
    A passdb as the C{passdb} label shows it: C{passwd-file:PATH},
    C{sql:PATH}, C{static} (its fields may hold a password), or a passdb of
    one's own by its class name; behind the auth cache, as itself.
    """
    passdb = _behindCache(passdb)
    if isinstance(passdb, PasswdFilePassdb):
        return f"passwd-file:{passdb.path}"
    if isinstance(passdb, SQLPassdb):
        return f"sql:{passdb.config.path}"
    if isinstance(passdb, StaticPassdb):
        return "static"
    return type(passdb).__name__


class ServerMetrics:
    """
    One process's metrics, fed by its log events and read from its state.

    @ivar registry: What C{/metrics} shows: these metrics, or in
        multiprocess mode every process's, read from C{directory}.
    """

    def __init__(
        self,
        factory: Any,
        checker: Any,
        verifier: Any,
        directory: str | None = None,
    ) -> None:
        """
        @param factory: The L{ReferralServerFactory}: its limiter, relays
            and penalty.
        @param checker: The server's checker: the passdbs of each
            L{PassdbChecker} in it (L{passdbCheckers}), whose
            L{PassdbChecker.lookupTimed} hooks L{MetricsService} takes.
        @param verifier: The L{SchemeVerifier}, for its queue.
        @param directory: prometheus_client's multiprocess directory (set
            as L{MULTIPROC_VARIABLE} here, for this process and the workers
            it starts), or L{None} for one process.
        """
        self._factory = factory
        self._checkers = passdbCheckers(checker)
        self._verifier = verifier
        self._limitsSeen: Tally[str] = Tally()
        disable_created_metrics()  # no *_created series: Prometheus does not need them
        if directory is not None:
            os.environ[MULTIPROC_VARIABLE] = directory
            if not getattr(values.ValueClass, "_multiprocess", False):
                # The value class is chosen when prometheus_client is
                # imported; the first process sets the directory only now.
                values.ValueClass = values.MultiProcessValue()
        self.registry = CollectorRegistry()
        own = self.registry if directory is None else None
        if directory is not None:
            MultiProcessCollector(self.registry, path=directory)

        self.logins = Counter(
            "imapreferral_logins", "Logins by outcome.", ["outcome"], registry=own
        )
        # Children by label value, looked up once: labels() is most of the cost.
        self._byResult = {result: self.logins.labels(label) for result, label in OUTCOMES.items()}
        self._other = self.logins.labels("other")
        self.referrals = Counter(
            "imapreferral_referrals",
            "Referrals sent in login replies (NO or OK [REFERRAL]), by destination host.",
            ["host"],
            registry=own,
        )
        self.backendLogins = Counter(
            "imapreferral_backend_logins",
            "Proxy logins to a backend by result.",
            ["result"],
            registry=own,
        )
        self._byProxyEvent = {
            event: self.backendLogins.labels(result) for event, result in BACKEND_RESULTS.items()
        }
        self._byHost: dict[str, Any] = {}
        self.limitHits = Counter(
            "imapreferral_limit_hits",
            "Connections refused or closed by a limit, by the option that sets it.",
            ["limit"],
            registry=own,
        )
        for limit in LIMITS:
            self.limitHits.labels(limit)
        self.loginSeconds = Histogram(
            "imapreferral_login_seconds",
            "Seconds a login's check took: passdbs, password hashing, decision "
            "(not the penalty wait or the failure delay).",
            buckets=BUCKETS,
            registry=own,
        )
        self.lookupSeconds = Histogram(
            "imapreferral_passdb_lookup_seconds",
            "Seconds a passdb lookup took, by passdb.",
            ["passdb"],
            buckets=BUCKETS,
            registry=own,
        )

        def gauge(name: str, text: str, labels: tuple[str, ...] = (), mode: str = "livesum"):
            return Gauge(name, text, labels, registry=own, multiprocess_mode=mode)

        self.connections = gauge("imapreferral_connections_open", "Client connections open.")
        self.proxied = gauge(
            "imapreferral_proxied_sessions_open", "Proxied sessions being relayed."
        )
        self.penalised = gauge(
            "imapreferral_penalised_addresses",
            "Client addresses (IPv6: /48s) whose next login waits out a penalty.",
        )
        self.hashWaiting = gauge(
            "imapreferral_hashing_waiting", "Password checks waiting for a hashing thread."
        )
        self.hashRunning = gauge(
            "imapreferral_hashing_running", "Password checks in the hashing threads."
        )
        self.passdbUp = gauge(
            "imapreferral_passdb_up",
            "1 if the passdb answers, 0 if it is unavailable (with workers: in any process).",
            ("passdb",),
            mode="livemin",
        )
        self.refresh()

    # Events

    def observe(self, event: dict[str, Any]) -> None:
        """A log observer: count the login and proxy lines."""
        namespace = event.get("log_namespace")
        if namespace == _LOGIN_NAMESPACE:
            result = event.get("result")
            if result is None:
                return
            self._byResult.get(result, self._other).inc()
            host = event.get("referralHost")
            if host is not None:
                child = self._byHost.get(host)
                if child is None:
                    child = self._byHost[host] = self.referrals.labels(host)
                child.inc()
            milliseconds = event.get("durationMs")
            if milliseconds is not None:
                self.loginSeconds.observe(milliseconds / 1000)
        elif namespace == _PROXY_NAMESPACE:
            child = self._byProxyEvent.get(event.get("event"))  # type: ignore[arg-type]
            if child is not None:
                child.inc()

    def lookupTimed(self, passdb: IPassdb, seconds: float) -> None:
        """L{PassdbChecker.lookupTimed}."""
        self.lookupSeconds.labels(passdbLabel(passdb)).observe(seconds)

    # State

    def refresh(self) -> None:
        """Read the state the gauges and limit hits show, now."""
        factory = self._factory
        limiter = factory.limiter
        self.connections.set(limiter.total)
        for limit, count in limiter.hits.items():
            new = count - self._limitsSeen[limit]
            if new > 0:
                self.limitHits.labels(limit).inc(new)
                self._limitsSeen[limit] = count
        self.proxied.set(len(factory.relays))
        penalty = factory.attempts.penalty
        self.penalised.set(0 if penalty is None else penalty.penalised())
        self.hashWaiting.set(getattr(self._verifier, "queued", 0))
        self.hashRunning.set(getattr(self._verifier, "hashing", 0))
        for passdb in (p for checker in self._checkers for p in checker.passdbs):
            up = getattr(_behindCache(passdb), "available", True)
            self.passdbUp.labels(passdbLabel(passdb)).set(1 if up else 0)


class _MetricsPage(Resource):
    """C{/metrics}: the state read now, then prometheus_client's own resource."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.metrics: ServerMetrics | None = None
        self._page: Resource | None = None

    def render(self, request: Request) -> Any:
        if self.metrics is None:
            request.setResponseCode(503)
            return b"not started\n"
        if self._page is None:
            self._page = MetricsResource(self.metrics.registry)
        self.metrics.refresh()  # here, in the reactor thread
        return self._page.render(request)  # the text is made in a thread


class MetricsSite(Site):
    """No access log line per scrape, no factory start and stop lines."""

    noisy = False

    def log(self, request: Request) -> None:
        pass


class MetricsService(MultiService):
    """
    Counts while running, and in the first process serves C{/metrics} on
    the C{--metrics} listener.

    The listener binds with the others (in C{privilegedStartService}, before
    twistd drops privileges); the metrics and the multiprocess directory are
    made in L{startService}, after it, so the directory belongs to the user
    the server runs as. Start this before the worker processes: they inherit
    the directory through the environment.

    @ivar metrics: This process's L{ServerMetrics} while running.
    """

    def __init__(
        self,
        reactor: Any,
        listener: Listener,
        factory: Any,
        checker: Any,
        verifier: Any,
        workers: int,
        worker: bool,
    ) -> None:
        """
        @param workers: C{--workers}: more than 1 means multiprocess mode.
        @param worker: Whether this process is a worker (it counts, the
            first process serves).
        """
        super().__init__()
        self._reactor = reactor
        self._sources = (factory, checker, verifier)
        self._workers = workers
        self._worker = worker
        self._page = _MetricsPage()
        self._sampler: LoopingCall | None = None
        self.metrics: ServerMetrics | None = None
        if not worker:
            root = Resource()
            root.putChild(b"metrics", self._page)
            endpoint = endpoints.serverFromString(reactor, listener.endpoint)
            ListenerService(listener, endpoint, MetricsSite(root)).setServiceParent(self)

    def _directory(self) -> str | None:
        """The multiprocess directory: made here (first process), inherited (workers)."""
        if self._worker:
            return os.environ.get(MULTIPROC_VARIABLE)
        if self._workers <= 1:
            return None
        directory = tempfile.mkdtemp(prefix="imapreferral-metrics-")
        self._reactor.addSystemEventTrigger(
            "after", "shutdown", shutil.rmtree, directory, ignore_errors=True
        )
        return directory

    def startService(self) -> None:
        directory = self._directory()
        factory, checker, verifier = self._sources
        self.metrics = metrics = ServerMetrics(factory, checker, verifier, directory)
        self._page.metrics = metrics
        for each in passdbCheckers(checker):
            each.lookupTimed = metrics.lookupTimed
        globalLogPublisher.addObserver(metrics.observe)
        if directory is not None:
            self._sampler = LoopingCall(metrics.refresh)
            self._sampler.clock = self._reactor
            self._sampler.start(SAMPLE_INTERVAL, now=False)
        super().startService()

    def stopService(self) -> Any:
        if self.metrics is not None:
            globalLogPublisher.removeObserver(self.metrics.observe)
            for each in passdbCheckers(self._sources[1]):
                each.lookupTimed = None
        if self._sampler is not None and self._sampler.running:
            self._sampler.stop()
        self._sampler = None
        return super().stopService()
