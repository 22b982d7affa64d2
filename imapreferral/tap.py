"""
C{twistd imapreferral}: command-line strings to objects, no rules.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import signal
import socket
import sys
import threading
from typing import Any

from OpenSSL import crypto
from twisted.application.service import IService, MultiService, Service
from twisted.cred import strcred
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.portal import Portal
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage

from imapreferral import __version__, descriptors, logfiles, workers
from imapreferral.authplugins import (
    SUPPORTED_INTERFACES,
    AuthChecker,
    AuthPluginError,
    checkerFromString,
)
from imapreferral.haproxy import proxyProtocolFactory
from imapreferral.imap.account import ReferralRealm
from imapreferral.imap.factory import REFERRAL_AUTH_CHOICES, ReferralServerFactory
from imapreferral.imap.policy import PLAINTEXT_AUTH_CHOICES, ServerPolicy, validateServerURL
from imapreferral.limits import ConnectionLimiter
from imapreferral.listeners import (
    ListenerError,
    ListenerService,
    isLoopbackOnly,
    parseListener,
    probeListeners,
)
from imapreferral.login.attempt import DEFAULT_FAILURE_DELAY
from imapreferral.login.chain import CheckerChain, canCheckChallenges, canCheckPasswords
from imapreferral.login.checker import PassdbChecker
from imapreferral.login.client import DEFAULT_REFERRAL_CLIENT_NAMES, REFERRAL_MODES, UNKNOWN
from imapreferral.login.destination import proxyDestination
from imapreferral.login.fields import (
    FieldError,
    PassdbReply,
    redactSecretFields,
    splitExtraFields,
)
from imapreferral.login.outcome import Unavailable
from imapreferral.login.sasl import MECHANISMS
from imapreferral.networks import NetworkList
from imapreferral.passdbs import PASSDB_TYPES, PassdbConfigError, passdbFromString
from imapreferral.passdbs.cache import AuthCache, CachedPassdb, parseDuration, parseSize
from imapreferral.passdbs.sql import DEFAULT_TIMEOUT
from imapreferral.passdbs.static import StaticPassdb
from imapreferral.passwords import SchemeVerifier
from imapreferral.proxy.connect import MAX_RECONNECTS, BackendConnector, loadTrustRoot
from imapreferral.reload import IReloadable, Reloader
from imapreferral.shutdown import (
    DEFAULT_GRACE,
    LAST_CALL,
    Drain,
    exitCleanly,
    hurryOnSignal,
    stopInStages,
)
from imapreferral.tls import ReloadableTLS, TLSConfigError

_log = Logger()

EXAMPLES = os.path.join(os.path.dirname(__file__), "examples")
EXAMPLE_PASSWD = os.path.join(EXAMPLES, "users.passwd")
EXAMPLE_SQL = os.path.join(EXAMPLES, "dovecot-sql.conf.ext")
DEFAULT_PASSDBS = ("passwd-file:" + EXAMPLE_PASSWD, "sql:" + EXAMPLE_SQL)
DEFAULT_LISTEN = "tcp:1143:interface=127.0.0.1:backlog=512"


def _shown(option: str, value: str) -> str:
    """C{--option value} as the user would type it, for messages."""
    return f"--{option} {shlex.quote(value)}"


def _secondsFor(option: str, low: float) -> Any:
    def parse(value: str) -> float:
        try:
            seconds = float(value)
        except ValueError:
            raise usage.UsageError(f"{_shown(option, value)}: not a number") from None
        if not low <= seconds <= 3600:
            raise usage.UsageError(f"{_shown(option, value)}: must be {low:g}..3600 seconds")
        return seconds

    return parse


_delay = _secondsFor("auth-failure-delay", 0)
_seconds = _secondsFor("passdb-timeout", 0.1)


def _count(option: str, low: int = 0) -> Any:
    def parse(value: str) -> int:
        if not value.isascii() or not value.isdigit():
            raise usage.UsageError(f"{_shown(option, value)}: not a whole number")
        if int(value) < low:
            raise usage.UsageError(f"{_shown(option, value)}: must be at least {low}")
        return int(value)

    return parse


def _parsedBy(option: str, parse: Any) -> Any:
    """A coercer: C{parse(value)}, its C{ValueError} one line naming the option."""

    def coerce(value: str) -> Any:
        try:
            return parse(value)
        except ValueError as e:
            raise usage.UsageError(f"{_shown(option, value)}: {e}") from None

    return coerce


def _mechanisms(value: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(value.replace(",", " ").upper().split()))
    unknown = [name for name in names if name not in MECHANISMS]
    if unknown or not names:
        problem = f"unknown mechanism {unknown[0]}" if unknown else "no mechanism named"
        raise usage.UsageError(
            f"{_shown('auth-mechanisms', value)}: {problem} (use {', '.join(MECHANISMS)})"
        )
    return names


def _ignoreHangupUntilReady() -> None:
    """
    C{SIGHUP}'s default action ends the process, silently (and systemd's
    C{Restart=on-failure} does not restart a process a HUP ended): from the
    moment our options are parsed (files are read, SQL queries checked:
    seconds) until the L{Reloader} takes the signal at start, a renewal
    hook's C{SIGHUP} is ignored instead.
    """
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGHUP) is signal.SIG_DFL
    ):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)


class Options(usage.Options, strcred.AuthOptionMixin):
    synopsis = "[options]"
    longdesc = (
        "An IMAP4 server that answers logins with RFC 2221 login referrals from "
        "Dovecot-style passdbs. With no options it serves the bundled example "
        f"passwd-file and SQLite passdb on {DEFAULT_LISTEN}; listeners that "
        "other hosts can reach need --passdb."
    )
    #: What --auth checkers must take, and what --help-auth lists.
    supportedInterfaces = SUPPORTED_INTERFACES
    optFlags = [
        [
            "keep-username-case",
            None,
            "Look users up as typed (Dovecot's default lower-cases: %Lu).",
        ],
    ]
    optParameters = [
        ["auth-failure-delay", None, DEFAULT_FAILURE_DELAY,
         "Seconds before a failed authentication is answered; 0 disables.", _delay],
        ["referral-auth", None, "mech",
         "What referral URLs put in ;AUTH=: 'mech' (the mechanism used) or '*'."],
        ["greeting", None, "imapreferral ready.", "Text of the * OK greeting."],
        ["passdb-timeout", None, DEFAULT_TIMEOUT,
         "Seconds to wait for a SQL database (connect, query) before a temporary failure.",
         _seconds],
        ["tls-cert", None, None, "PEM certificate (a chain may follow) for STARTTLS and --listen-tls."],
        ["tls-key", None, None, "PEM private key of --tls-cert."],
        ["trusted-networks", None, "127.0.0.0/8 ::1/128",
         "Networks that may log in without TLS and are exempt from per-IP limits (CIDR list)."],
        ["plaintext-auth", None, "secure",
         "'secure': plaintext logins only over TLS or from trusted networks; 'always'."],
        ["log-format", None, "text",
         "'text' (twistd's lines) or 'json' (one object per line, fixed keys), "
         "written where twistd writes its log (--logfile)."],
        ["greeting-referral", None, None,
         "Answer every connection with * BYE [REFERRAL URL] and close (RFC 2221 4.2)."],
        ["greeting-referral-reason", None, ServerPolicy.__attrs_attrs__.greetingReferralReason.default,
         "Text after the greeting referral."],
        ["max-connections", None, 2000, "Most connections at once (0: no limit).",
         _count("max-connections")],
        ["max-connections-per-ip", None, 20,
         "Most connections from one client address; trusted networks exempt (0: no limit).",
         _count("max-connections-per-ip")],
        ["max-bad-commands", None, 10, "Pre-login BAD replies before * BYE.",
         _count("max-bad-commands")],
        ["max-auth-failures", None, 5, "Failed logins per connection before * BYE.",
         _count("max-auth-failures")],
        ["preauth-idle-timeout", None, 60.0, "Seconds a pre-login connection may stay silent.",
         _secondsFor("preauth-idle-timeout", 1)],
        ["preauth-lifetime", None, 300.0, "Seconds a connection may stay unauthenticated.",
         _secondsFor("preauth-lifetime", 1)],
        ["auth-penalty-cap", None, 15.0,
         "Repeated failures from one address wait longer, doubling up to this; 0 disables.",
         _secondsFor("auth-penalty-cap", 0)],
        ["haproxy-trusted-networks", None, "",
         "Peers that may send PROXY protocol headers to haproxy: listeners (CIDR list)."],
        ["workers", None, 1,
         "Server processes sharing the listeners (one Python process uses one core).",
         _count("workers", low=1)],
        ["auth-mechanisms", None, None,
         "SASL mechanisms to offer and accept, e.g. PLAIN,LOGIN (default: PLAIN LOGIN, and "
         "CRAM-MD5 when a passdb may hold plaintext passwords).", _mechanisms],
        ["id-name", None, "imapreferral", "The name we give in answer to ID (RFC 2971)."],
        ["id-version", None, __version__, "The version we give in answer to ID; '' for none."],
        ["proxy-max-reconnects", None, MAX_RECONNECTS,
         "Retries of a proxy backend that is down, 1 s apart, within proxy_timeout.",
         _count("proxy-max-reconnects")],
        ["local-backend", None, None,
         "Proxy every login that succeeds here to this server (the old mail server behind "
         "us), static passdb fields: 'host=... [port=...] [starttls=yes] [master=... pass=...]'."],
        ["auth-cache-size", None, 0,
         "Authentication cache size in bytes, e.g. 10M (Dovecot's auth_cache_size); 0: no cache.",
         _parsedBy("auth-cache-size", parseSize)],
        ["auth-cache-ttl", None, 3600.0,
         "How long a cached passdb answer is used, e.g. '1 hour' (auth_cache_ttl).",
         _parsedBy("auth-cache-ttl", parseDuration)],
        ["auth-cache-negative-ttl", None, 3600.0,
         "How long an unknown user stays cached (auth_cache_negative_ttl); 0: not cached.",
         _parsedBy("auth-cache-negative-ttl", parseDuration)],
        ["referral-mode", None, "refer",
         "What a host + nologin reply comes to: 'refer' (everyone gets the referral), "
         "'proxy' (proxied to that host instead) or 'auto' (referred if the client follows "
         "referrals, else proxied)."],
        ["referral-client-names", None, ",".join(DEFAULT_REFERRAL_CLIENT_NAMES),
         "Clients that follow referrals (comma-separated): 'c-client' (recognised by its "
         "tags; drop it if PHP's imap extension, a c-client that does not follow, logs "
         "in) and ID names (case-insensitive)."],
        ["backend-ca", None, None,
         "PEM CA certificates proxy backends' certificates must chain to "
         "(default: the system trust store)."],
        ["shutdown-grace", None, DEFAULT_GRACE,
         "Seconds proxied and logged-in sessions may go on after SIGTERM before they are "
         "closed (logins in flight are answered first).",
         _secondsFor("shutdown-grace", 0)],
    ]  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        _ignoreHangupUntilReady()
        self["listen"] = []
        self["listen-tls"] = []
        self["listeners"] = []
        self["passdb"] = []
        self["auth"] = []
        # --passdb and --auth in command-line order: they are consulted so.
        self["sources"] = []
        self["proxy-self"] = []
        self["metrics"] = None

    def parseOptions(self, options: Any = None) -> None:
        """
        As C{usage.Options}, but a bad option is one line on stderr and exit
        status 1: twistd prints the whole usage text (70 lines) before a
        subcommand's C{UsageError}. C{--help} still prints the help.
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            raise SystemExit(f"imapreferral: {e}") from None

    def _adoptsListeners(self) -> bool:
        """
        Whether this process adopts sockets passed down rather than looking
        up systemd's: a worker (C{--workers}) does. (The C{imapreferral}
        command binds and adopts nothing, and says so.)
        """
        return workers.ADOPT_VARIABLE in os.environ

    def _listener(self, option: str, description: str) -> None:
        from twisted.internet import reactor

        try:
            adopted = self._adoptsListeners()
            self["listeners"].append(parseListener(option, description, reactor, adopted))
        except ListenerError as e:
            raise usage.UsageError(str(e)) from None
        self[option].append(description)

    def opt_listen(self, description: str) -> None:
        """
        Listen on a Twisted server endpoint, e.g. tcp:1143:interface=127.0.0.1
        (repeatable); STARTTLS is offered there when --tls-cert is given.
        Prefix haproxy: to expect PROXY protocol headers (see
        --haproxy-trusted-networks).
        """
        self._listener("listen", description)

    def opt_listen_tls(self, description: str) -> None:
        """Listen for implicit TLS (imaps), e.g. tcp:993 (repeatable); needs --tls-cert."""
        self._listener("listen-tls", description)

    def opt_metrics(self, description: str) -> None:
        """
        Serve Prometheus metrics at /metrics on a Twisted server endpoint,
        e.g. tcp:9143:interface=127.0.0.1 (no password: keep it on loopback
        or a private network).
        """
        from twisted.internet import reactor

        try:
            listener = parseListener("metrics", description, reactor)
        except ListenerError as e:
            raise usage.UsageError(str(e)) from None
        if listener.proxied:
            raise usage.UsageError(f"{listener.shown}: no PROXY headers here")
        self["metrics"] = listener

    def opt_proxy_self(self, address: str) -> None:
        """
        An ADDRESS:PORT that is this server too (behind NAT, a load
        balancer), for proxy_maybe and the proxy loop check (repeatable);
        our listeners count without it.
        """
        host, _, port = address.rpartition(":")
        try:
            ip = str(ipaddress.ip_address(host.strip("[]")))
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError
        except ValueError:
            raise usage.UsageError(
                f"{_shown('proxy-self', address)}: not ADDRESS:PORT (e.g. 192.0.2.1:143)"
            ) from None
        self["proxy-self"].append((ip, int(port)))

    def opt_passdb(self, description: str) -> None:
        """
        A passdb, consulted in order: passwd-file:PATH, static:FIELDS or
        sql:DOVECOT-SQL-CONF (repeatable).
        """
        self["passdb"].append(description)
        self["sources"].append(("passdb", description))

    def opt_auth(self, description: str) -> None:
        """A twisted.cred checker plugin, TYPE:ARGS (repeatable; in order with --passdb)."""
        self["auth"].append(description)
        self["sources"].append(("auth", description))

    def _checkLogFormat(self) -> None:
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError(
                f"{_shown('log-format', self['log-format'])}: use 'text' or 'json'"
            )
        parent = getattr(self, "parent", None)
        if self["log-format"] == "json" and parent is not None and parent.get("syslog"):
            raise usage.UsageError("--log-format json writes to a file or stdout, not --syslog")

    def postOptions(self) -> None:
        if self["referral-auth"] not in REFERRAL_AUTH_CHOICES:
            raise usage.UsageError(
                f"{_shown('referral-auth', self['referral-auth'])}: use 'mech' or '*'"
            )
        if self["referral-mode"] not in REFERRAL_MODES:
            raise usage.UsageError(
                f"{_shown('referral-mode', self['referral-mode'])}: use 'refer', 'proxy' or 'auto'"
            )
        self["referral-client-names"] = tuple(
            name.strip().lower()
            for name in self["referral-client-names"].split(",")
            if name.strip()
        )
        if UNKNOWN in self["referral-client-names"]:
            raise usage.UsageError(
                f"--referral-client-names: {UNKNOWN!r} is what a client nothing recognises "
                "is called, not a client name"
            )
        if self["plaintext-auth"] not in PLAINTEXT_AUTH_CHOICES:
            raise usage.UsageError(
                f"{_shown('plaintext-auth', self['plaintext-auth'])}: use 'secure' or 'always'"
            )
        self._checkLogFormat()
        if self["greeting-referral"] is not None:
            try:
                validateServerURL(self["greeting-referral"])
            except ValueError as e:
                raise usage.UsageError(f"--greeting-referral: {e}") from None
        self._parseNetworks()
        if not self["listeners"]:
            self._listener("listen", DEFAULT_LISTEN)
        self._refuseExampleUsersInPublic()
        try:
            # A worker (--workers) adopts its first process's sockets.
            self["adopt-listeners"] = workers.adoptedListenerCount(os.environ)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        self["tls"] = self._loadTLS()
        self._loadSources()
        self._checkMechanisms()
        self["local-backend"] = self._localBackend(self["local-backend"])
        if self["backend-ca"] is not None:
            shown = _shown("backend-ca", self["backend-ca"])
            try:
                self["backend-trust"] = loadTrustRoot(self["backend-ca"])
            except OSError as e:
                raise usage.UsageError(f"{shown}: cannot read ({e.strerror})") from None
            except (ValueError, crypto.Error):
                raise usage.UsageError(f"{shown}: no valid PEM certificate in it") from None
        else:
            self["backend-trust"] = None
        if self.parent is not None and not self["adopt-listeners"]:
            # Starting under twistd: bind now, before logging and daemonising,
            # so a port in use is this one line on stderr. Parsing alone
            # (tests, embedding) binds nothing; workers adopt the sockets.
            try:
                probeListeners([*self["listeners"], *filter(None, [self["metrics"]])])
            except ListenerError as e:
                raise usage.UsageError(str(e)) from None

    def _loadSources(self) -> None:
        """
        C{--passdb} and C{--auth}, in order, to passdbs and L{AuthChecker}s
        in C{self["sources"]} (C{self["passdb"]}: the passdbs among them).
        C{--auth passwd-file:PATH} is C{--passdb passwd-file:PATH}.
        """
        given = self["sources"] or [("passdb", d) for d in DEFAULT_PASSDBS]
        sources: list[Any] = []
        try:
            for option, description in given:
                if option == "passdb" or description.partition(":")[0] in PASSDB_TYPES:
                    sources.append(
                        passdbFromString(
                            description, timeout=self["passdb-timeout"], option=option
                        )
                    )
                else:
                    sources.append(checkerFromString(description))
        except (PassdbConfigError, AuthPluginError) as e:
            raise usage.UsageError(str(e)) from None
        self["sources"] = sources
        self["passdb"] = [s for s in sources if not isinstance(s, AuthChecker)]

    def _parseNetworks(self) -> None:
        for option in ("trusted-networks", "haproxy-trusted-networks"):
            try:
                self[option] = NetworkList.fromOption(self[option])
            except ValueError as e:
                raise usage.UsageError(f"--{option}: {e}") from None
        proxied = [listener for listener in self["listeners"] if listener.proxied]
        if proxied and not self["haproxy-trusted-networks"].networks:
            raise usage.UsageError(
                f"{proxied[0].shown} expects PROXY headers: say who may send them with "
                "--haproxy-trusted-networks"
            )

    @staticmethod
    def _localBackend(value: str | None) -> PassdbReply | None:
        """C{--local-backend}: static passdb fields naming a backend."""
        if value is None:
            return None
        shown = _shown("local-backend", redactSecretFields(value))  # its pass= is a secret
        try:
            reply = PassdbReply.fromFields(splitExtraFields(value))
        except FieldError as e:
            raise usage.UsageError(f"{shown}: {e}") from None
        destination = proxyDestination(reply, "user", "password")
        if isinstance(destination, Unavailable):
            raise usage.UsageError(f"{shown}: give host= (and port= unless 143)") from None
        return reply

    def _checkMechanisms(self) -> None:
        """
        Offer only what some passdb or checker can check: CRAM-MD5 needs a
        stored plaintext (or {CRAM-MD5}) password to check against, PLAIN
        and LOGIN a checker of cleartext passwords.
        """
        chosen = self["auth-mechanisms"] or ()
        sources = [getattr(s, "checker", s) for s in self["sources"]]
        if "CRAM-MD5" in chosen and not any(canCheckChallenges(s) for s in sources):
            raise usage.UsageError(
                f"{_shown('auth-mechanisms', ','.join(chosen))}: CRAM-MD5 needs plaintext or "
                "{CRAM-MD5} passwords, and no passdb or checker may hold them"
            )
        cleartext = [m for m in chosen if m in ("PLAIN", "LOGIN")]
        if cleartext and not any(canCheckPasswords(s) for s in sources):
            raise usage.UsageError(
                f"{_shown('auth-mechanisms', ','.join(chosen))}: {cleartext[0]} needs a checker "
                "of cleartext passwords (IUsernamePassword), and none is configured"
            )

    def _refuseExampleUsersInPublic(self) -> None:
        """
        Without C{--passdb} we serve the bundled example users, whose
        password is C{pass}: fine for trying us on loopback, not for a
        listener others can reach (a greeting referral consults no passdb).
        """
        if self["sources"] or self["greeting-referral"] is not None:
            return
        for listener in self["listeners"]:
            if not isLoopbackOnly(listener):
                raise usage.UsageError(
                    f"{listener.shown} is reachable from other hosts: give --passdb (without it "
                    "the bundled example users, password 'pass', are served, on loopback only)"
                )

    def _loadTLS(self) -> Any:
        cert, key = self["tls-cert"], self["tls-key"]
        if (cert is None) != (key is None):
            raise usage.UsageError("--tls-cert and --tls-key go together")
        if cert is None:
            if self["listen-tls"]:
                raise usage.UsageError("--listen-tls needs --tls-cert and --tls-key")
            return None
        try:
            return ReloadableTLS(cert, key)
        except TLSConfigError as e:
            raise usage.UsageError(str(e)) from None


class ReferralService(MultiService):
    """
    The listeners, and one log line at start saying what is served.

    @ivar limiter: The connection limits, lowered at start when the
        descriptors this process may open cannot hold them.
    @ivar reloader: What C{SIGHUP} re-reads (L{imapreferral.reload}).
    @ivar grace: Seconds sessions may go on after C{SIGTERM}
        (L{imapreferral.shutdown}).
    """

    def __init__(
        self,
        description: str,
        limiter: ConnectionLimiter,
        factory: Any = None,
        authCache: AuthCache | None = None,
        logTo: Any = None,
        jsonLog: bool = False,
        logRole: logfiles.Role = logfiles.Role.ALONE,
        grace: float = DEFAULT_GRACE,
    ) -> None:
        """
        @param authCache: The authentication cache, flushed on C{SIGHUP}.
        @param logTo: twistd's options, saying where it logs (L{None}:
            twistd's log as it is, when we are not run by twistd).
        @param jsonLog: Whether the log is to be JSON lines.
        @param logRole: Which process of C{--workers} this is, for the log
            file they share (L{imapreferral.logfiles.installIn}).
        @param grace: Seconds logged-in and proxied sessions may go on after
            C{SIGTERM} (L{imapreferral.shutdown}).
        """
        from twisted.internet import reactor

        super().__init__()
        self.description = description
        self.limiter = limiter
        self.factory = factory
        self.authCache = authCache
        self.logTo = logTo
        self.jsonLog = jsonLog
        self.logRole = logRole
        self.grace = grace
        self.reloader = Reloader(reactor)
        self.reloader.setServiceParent(self)
        if authCache is not None:  # emptied once the passdbs are re-read
            self.reloader.register(authCache, afterwards=True)

    def setServiceParent(self, parent: Any) -> Any:
        """
        twistd makes the application, makes this its service, and only then
        chooses its log observer: the moment to offer ours. The first
        process of C{--workers} has them reopen the file it rotated.
        """
        if self.logTo is not None and hasattr(parent, "setComponent"):
            processes = [c for c in self if isinstance(c, workers.WorkerProcesses)]
            logfiles.installIn(
                parent,
                self.logTo,
                self.jsonLog,
                self.logRole,
                rotated=processes[0].reopenLogs if processes else None,
            )
        return super().setServiceParent(parent)

    def privilegedStartService(self) -> None:
        descriptors.fitConnectionLimit(self.limiter)
        super().privilegedStartService()

    def startService(self) -> None:
        _log.info("imapreferral serving {description}", description=self.description)
        super().startService()

    def stopService(self) -> Any:
        """
        Stop listening, drain the connections (L{imapreferral.shutdown}),
        then stop the rest; exit status 0.
        """
        from twisted.internet import reactor

        if self.factory is None:
            return super().stopService()
        drain = Drain(self.factory, reactor, self.grace)
        processes = [c for c in self if isinstance(c, workers.WorkerProcesses)]
        stopped: Deferred[None] = Deferred()  # workers included
        hurryOnSignal(reactor, drain, also=[p.hurry for p in processes], until=stopped)
        d = stopInStages(
            self,
            lambda child: isinstance(child, (ListenerService, _AdoptedListeners)),
            lambda child: isinstance(child, workers.WorkerProcesses),
            drain.start,
        )
        d.addBoth(lambda result: (stopped.callback(None), result)[1])
        return d.addCallback(lambda _: exitCleanly(reactor))


def selfAddresses(config: Any) -> set[tuple[str, int]]:
    """
    Where this server can be reached: C{--proxy-self} and each TCP
    listener's address; a listener on every address counts as loopback and
    this host's name's addresses.
    """
    found = set(config["proxy-self"])
    for listener in config["listeners"]:
        if listener.family is None or not listener.port:
            continue
        interface = listener.interface.strip("[]")
        if interface in ("", "0.0.0.0", "::"):
            hosts = {"127.0.0.1", "::1"}
            try:
                infos = socket.getaddrinfo(socket.gethostname(), None)
            except OSError:
                infos = []
            hosts |= {str(info[4][0]) for info in infos}
        else:
            hosts = {interface}
        for host in hosts:
            try:
                found.add((str(ipaddress.ip_address(host)), listener.port))
            except ValueError:
                continue
    return found


def makeService(config: Any) -> IService:
    from twisted.internet import reactor

    verifier = SchemeVerifier()  # slow hashes on its own bounded thread pool
    ourselves = selfAddresses(config)
    connector = BackendConnector(
        reactor,
        trustRoot=config["backend-trust"],
        maxReconnects=config["proxy-max-reconnects"],
        selfAddresses=ourselves,
    )
    authCache = None
    if config["auth-cache-size"]:
        authCache = AuthCache(
            config["auth-cache-size"], config["auth-cache-ttl"], config["auth-cache-negative-ttl"]
        )
    cacheNames = {id(source): f"passdb{i}" for i, source in enumerate(config["sources"])}

    def cached(passdbs: list[Any]) -> list[Any]:
        """Each passdb behind the cache, but static (it answers every user from memory)."""
        if authCache is None:
            return passdbs
        return [
            p if isinstance(p, StaticPassdb) else CachedPassdb(p, authCache, cacheNames[id(p)])
            for p in passdbs
        ]

    checker = _checker(
        config,
        lambda passdbs: PassdbChecker(
            cached(passdbs),
            verifier=verifier,
            lowercaseUsernames=not config["keep-username-case"],
            selfAddresses=ourselves,
            resolveHost=connector.resolveHost,
            referralMode=config["referral-mode"],
        ),
    )
    idFields = [("name", config["id-name"])]
    if config["id-version"]:
        idFields.append(("version", config["id-version"]))
    factory = ReferralServerFactory(
        Portal(ReferralRealm(), [checker]),
        failureDelay=config["auth-failure-delay"],
        referralAuth=config["referral-auth"],
        mechanisms=config["auth-mechanisms"],
        greeting=config["greeting"],
        maxConnections=config["max-connections"],
        maxConnectionsPerAddress=config["max-connections-per-ip"],
        authPenaltyCap=config["auth-penalty-cap"],
        tlsContext=config["tls"],
        trustedNetworks=config["trusted-networks"],
        plaintextAuth=config["plaintext-auth"],
        greetingReferral=config["greeting-referral"],
        greetingReferralReason=config["greeting-referral-reason"],
        maxBadCommands=config["max-bad-commands"],
        maxAuthFailures=config["max-auth-failures"],
        preauthIdle=config["preauth-idle-timeout"],
        preauthLifetime=config["preauth-lifetime"],
        idFields=tuple(idFields),
        connector=connector,
        localBackend=config["local-backend"],
        referralClientNames=config["referral-client-names"],
    )
    listeners = [*config["listen"], *(f"{d} (TLS)" for d in config["listen-tls"])]
    service = ReferralService(
        f"{', '.join(listeners)} with passdbs " + ", ".join(repr(s) for s in config["sources"]),
        factory.limiter,
        factory,
        authCache,
        logTo=getattr(config, "parent", None),
        jsonLog=config["log-format"] == "json",
        logRole=logfiles.Role.WORKER
        if config["adopt-listeners"]
        else logfiles.Role.FIRST
        if config["workers"] > 1
        else logfiles.Role.ALONE,
        grace=config["shutdown-grace"],
    )
    verifier.setServiceParent(service)
    for reloadable in [config["tls"], *config["sources"]]:
        reloadable = getattr(reloadable, "checker", reloadable)  # an --auth checker too
        if IReloadable.providedBy(reloadable):
            service.reloader.register(reloadable)
    if config["metrics"] is not None:
        from imapreferral.metrics import MetricsService  # prometheus_client only if asked

        MetricsService(
            reactor, config["metrics"], factory, checker, verifier,
            workers=config["workers"], worker=bool(config["adopt-listeners"]),
        ).setServiceParent(service)  # fmt: skip
    for source in config["sources"]:
        source = getattr(source, "checker", source)  # an --auth checker may be a service too
        if IService.providedBy(source):  # e.g. SQL: a connection pool to start and stop
            source.setServiceParent(service)
    factories = []
    for listener in config["listeners"]:
        listening: Any = factory
        if listener.option == "listen-tls":
            listening = TLSMemoryBIOFactory(config["tls"], False, factory)
        if listener.proxied:
            # The PROXY header comes first, before any TLS: HAProxy's
            # send-proxy in front of a TLS passthrough.
            listening = proxyProtocolFactory(listening, config["haproxy-trusted-networks"])
        factories.append((listener, listening))
    if config["adopt-listeners"]:
        workers.dieWithParent()
        _AdoptedListeners([f for _, f in factories]).setServiceParent(service)
        return service
    ports = []
    for listener, listening in factories:
        endpoint = endpoints.serverFromString(reactor, listener.endpoint)
        port = ListenerService(listener, endpoint, listening)
        port.setServiceParent(service)
        ports.append(port)
    if config["workers"] > 1:
        processes = workers.WorkerProcesses(
            reactor,
            config["workers"],
            ports,
            sys.argv,
            stopWithin=config["shutdown-grace"] + LAST_CALL + 5,  # after the worker's own abort
        )
        processes.setServiceParent(service)
        service.reloader.register(processes)
    return service


def _checker(config: Any, passdbChecker: Any) -> ICredentialsChecker:
    """
    One checker over C{config["sources"]} in order: each run of passdbs in
    one L{PassdbChecker} (C{passdbChecker(passdbs)}), each C{--auth}
    checker as it is, chained (L{CheckerChain}) when there is more than one.
    """
    checkers: list[ICredentialsChecker] = []
    run: list[Any] = []
    for source in [*config["sources"], None]:
        if source is not None and not isinstance(source, AuthChecker):
            run.append(source)
            continue
        if run:
            checkers.append(passdbChecker(run))
            run = []
        if source is not None:
            checkers.append(source.checker)
    if len(checkers) == 1 and isinstance(checkers[0], PassdbChecker):
        return checkers[0]
    return CheckerChain(checkers, lowercaseUsernames=not config["keep-username-case"])


class _AdoptedListeners(Service):
    """A worker's listeners: the sockets its first process passed down."""

    def __init__(self, factories: list[Any]) -> None:
        self.factories = factories
        self.ports: list[Any] = []

    def startService(self) -> None:
        from twisted.internet import reactor

        super().startService()
        workers.drainOnSignal(reactor)  # before accepting anything
        self.ports = workers.adoptListeners(reactor, self.factories)

    def stopService(self) -> Any:
        super().stopService()
        return DeferredList([port.stopListening() for port in self.ports])
