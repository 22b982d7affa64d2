"""
C{twistd imapreferral}: command-line strings to objects, no rules.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.application import strports
from twisted.application.service import IService, MultiService, Service
from twisted.cred.portal import Portal
from twisted.internet import endpoints
from twisted.internet.defer import DeferredList
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage

from imapreferral import __version__, workers
from imapreferral.haproxy import proxyProtocolFactory
from imapreferral.imap.account import ReferralRealm
from imapreferral.imap.factory import REFERRAL_AUTH_CHOICES, ReferralServerFactory
from imapreferral.imap.policy import PLAINTEXT_AUTH_CHOICES, ServerPolicy, validateServerURL
from imapreferral.login.attempt import DEFAULT_FAILURE_DELAY
from imapreferral.login.checker import PassdbChecker
from imapreferral.networks import NetworkList
from imapreferral.passdbs import PassdbConfigError, passdbFromString
from imapreferral.passdbs.sql import DEFAULT_TIMEOUT
from imapreferral.passwords import SchemeVerifier
from imapreferral.tls import TLSConfigError, loadTLS

_log = Logger()

EXAMPLES = os.path.join(os.path.dirname(__file__), "examples")
EXAMPLE_PASSWD = os.path.join(EXAMPLES, "users.passwd")
EXAMPLE_SQL = os.path.join(EXAMPLES, "dovecot-sql.conf.ext")
DEFAULT_PASSDBS = ("passwd-file:" + EXAMPLE_PASSWD, "sql:" + EXAMPLE_SQL)
DEFAULT_LISTEN = "tcp:1143:interface=127.0.0.1:backlog=512"


def _secondsFor(option: str, low: float) -> Any:
    def parse(value: str) -> float:
        try:
            seconds = float(value)
        except ValueError:
            raise usage.UsageError(f"--{option} {value!r}: not a number") from None
        if not low <= seconds <= 3600:
            raise usage.UsageError(f"--{option} {value!r}: must be {low:g}..3600 seconds")
        return seconds

    return parse


_delay = _secondsFor("auth-failure-delay", 0)
_seconds = _secondsFor("passdb-timeout", 0.1)


def _count(option: str) -> Any:
    def parse(value: str) -> int:
        if not value.isdigit():
            raise usage.UsageError(f"--{option} {value!r}: not a whole number")
        return int(value)

    return parse


def _withoutProxyPrefix(description: str) -> tuple[str, bool]:
    """
    C{haproxy:tcp:...} names a listener behind HAProxy. We parse the prefix
    ourselves: Twisted's own C{haproxy:} endpoint trusts every peer and lets
    the greeting out before the header.
    """
    if description.startswith("haproxy:"):
        return description[len("haproxy:") :], True
    return description, False


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "An IMAP4 server that answers logins with RFC 2221 login referrals from "
        "Dovecot-style passdbs. With no options it serves the bundled example "
        f"passwd-file and SQLite passdb on {DEFAULT_LISTEN}."
    )
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
         _count("workers")],
        ["adopt-listeners", None, 0, "Internal: a worker adopting N inherited sockets.",
         _count("adopt-listeners")],
        ["id-name", None, "imapreferral", "The name we give in answer to ID (RFC 2971)."],
        ["id-version", None, __version__, "The version we give in answer to ID; '' for none."],
    ]  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["listen-tls"] = []
        self["passdb"] = []

    def _endpoint(self, option: str, description: str) -> None:
        from twisted.internet import reactor

        try:
            endpoints.serverFromString(reactor, _withoutProxyPrefix(description)[0])
        except Exception as e:
            raise usage.UsageError(f"--{option} {description!r}: {e}") from None
        self[option].append(description)

    def opt_listen(self, description: str) -> None:
        """
        Listen on a Twisted server endpoint, e.g. tcp:1143:interface=127.0.0.1
        (repeatable); STARTTLS is offered there when --tls-cert is given.
        Prefix haproxy: to expect PROXY protocol headers (see
        --haproxy-trusted-networks).
        """
        self._endpoint("listen", description)

    def opt_listen_tls(self, description: str) -> None:
        """Listen for implicit TLS (imaps), e.g. tcp:993 (repeatable); needs --tls-cert."""
        self._endpoint("listen-tls", description)

    def opt_passdb(self, description: str) -> None:
        """
        A passdb, consulted in order: passwd-file:PATH, static:FIELDS or
        sql:DOVECOT-SQL-CONF (repeatable).
        """
        self["passdb"].append(description)

    def postOptions(self) -> None:
        if self["referral-auth"] not in REFERRAL_AUTH_CHOICES:
            raise usage.UsageError(f"--referral-auth {self['referral-auth']!r}: use 'mech' or '*'")
        if self["plaintext-auth"] not in PLAINTEXT_AUTH_CHOICES:
            raise usage.UsageError(
                f"--plaintext-auth {self['plaintext-auth']!r}: use 'secure' or 'always'"
            )
        try:
            self["trusted-networks"] = NetworkList.fromOption(self["trusted-networks"])
        except ValueError as e:
            raise usage.UsageError(f"--trusted-networks: {e}") from None
        if self["greeting-referral"] is not None:
            try:
                validateServerURL(self["greeting-referral"])
            except ValueError as e:
                raise usage.UsageError(f"--greeting-referral: {e}") from None
        try:
            self["haproxy-trusted-networks"] = NetworkList.fromOption(
                self["haproxy-trusted-networks"]
            )
        except ValueError as e:
            raise usage.UsageError(f"--haproxy-trusted-networks: {e}") from None
        proxied = [d for d in self["listen"] + self["listen-tls"] if _withoutProxyPrefix(d)[1]]
        if proxied and not self["haproxy-trusted-networks"].networks:
            raise usage.UsageError(
                f"{proxied[0]!r} expects PROXY headers: say who may send them with "
                "--haproxy-trusted-networks"
            )
        if not self["listen"] and not self["listen-tls"]:
            self["listen"] = [DEFAULT_LISTEN]
        self["tls"] = self._loadTLS()
        descriptions = self["passdb"] or list(DEFAULT_PASSDBS)
        try:
            self["passdb"] = [
                passdbFromString(d, timeout=self["passdb-timeout"]) for d in descriptions
            ]
        except PassdbConfigError as e:
            # One clear line, not the usage text: the option is fine, the file is not.
            raise SystemExit(f"imapreferral: {e}") from None

    def _loadTLS(self) -> Any:
        cert, key = self["tls-cert"], self["tls-key"]
        if (cert is None) != (key is None):
            raise usage.UsageError("--tls-cert and --tls-key go together")
        if cert is None:
            if self["listen-tls"]:
                raise usage.UsageError("--listen-tls needs --tls-cert and --tls-key")
            return None
        try:
            return loadTLS(cert, key)
        except TLSConfigError as e:
            raise SystemExit(f"imapreferral: {e}") from None


class ReferralService(MultiService):
    """The listeners, and one log line at start saying what is served."""

    def __init__(self, description: str) -> None:
        super().__init__()
        self.description = description

    def startService(self) -> None:
        _log.info("imapreferral serving {description}", description=self.description)
        super().startService()


def makeService(config: Any) -> IService:
    verifier = SchemeVerifier()  # slow hashes on its own bounded thread pool
    checker = PassdbChecker(
        config["passdb"], verifier=verifier, lowercaseUsernames=not config["keep-username-case"]
    )
    idFields = [("name", config["id-name"])]
    if config["id-version"]:
        idFields.append(("version", config["id-version"]))
    factory = ReferralServerFactory(
        Portal(ReferralRealm(), [checker]),
        failureDelay=config["auth-failure-delay"],
        referralAuth=config["referral-auth"],
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
    )
    listeners = [*config["listen"], *(f"{d} (TLS)" for d in config["listen-tls"])]
    service = ReferralService(
        f"{', '.join(listeners)} with passdbs " + ", ".join(repr(p) for p in config["passdb"])
    )
    verifier.setServiceParent(service)
    for passdb in config["passdb"]:
        if IService.providedBy(passdb):  # e.g. SQL: a connection pool to start and stop
            passdb.setServiceParent(service)
    listeners = [(d, factory) for d in config["listen"]] + [
        (d, TLSMemoryBIOFactory(config["tls"], False, factory)) for d in config["listen-tls"]
    ]
    factories = []
    for description, listening in listeners:
        endpoint, proxied = _withoutProxyPrefix(description)
        if proxied:
            # The PROXY header comes first, before any TLS: HAProxy's
            # send-proxy in front of a TLS passthrough.
            listening = proxyProtocolFactory(listening, config["haproxy-trusted-networks"])
        factories.append((endpoint, listening))
    if config["adopt-listeners"]:
        workers.dieWithParent()
        _AdoptedListeners([f for _, f in factories]).setServiceParent(service)
        return service
    ports = []
    for endpoint, listening in factories:
        listener = strports.service(endpoint, listening)
        listener.setServiceParent(service)
        ports.append(listener)
    if config["workers"] > 1:
        from twisted.internet import reactor

        workers.WorkerProcesses(reactor, config["workers"], ports, sys.argv).setServiceParent(
            service
        )
    return service


class _AdoptedListeners(Service):
    """A worker's listeners: the sockets its first process passed down."""

    def __init__(self, factories: list[Any]) -> None:
        self.factories = factories
        self.ports: list[Any] = []

    def startService(self) -> None:
        from twisted.internet import reactor

        super().startService()
        self.ports = workers.adoptListeners(reactor, self.factories)

    def stopService(self) -> Any:
        super().stopService()
        return DeferredList([port.stopListening() for port in self.ports])
