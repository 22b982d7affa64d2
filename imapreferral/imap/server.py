"""
L{ReferralIMAP4Server}: Twisted's C{IMAP4Server} with a login path that
speaks RFC 2221 login referrals.

Only IMAP plumbing lives here: parse C{LOGIN} and C{AUTHENTICATE} (the
exchange itself is L{imapreferral.login.sasl.SASLExchange}), run the
attempt, write the reply that L{imapreferral.imap.responses} words, hand a
proxy login to L{imapreferral.imap.proxying}, and say in IMAP words what
the connection's L{imapreferral.login.guard.PreLoginGuard} decides
(admission, the pre-login time limit, the budgets for bad commands and
failed logins, back-pressure, the plaintext policy). Twisted dispatches
commands through class attributes holding the base class's functions
(C{unauth_LOGIN = (do_LOGIN, ...)}), so each override re-declares its tuple.
"""

from __future__ import annotations

from base64 import b64encode
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IHandshakeListener, INegotiated, ISSLTransport
from twisted.logger import Logger
from twisted.mail.imap4 import IllegalClientResponse, IMAP4Server
from twisted.python.failure import Failure
from zope.interface import implementer

from imapreferral.imap.backend import DEFAULT_PROXY_TTL
from imapreferral.imap.idcommand import formatID, logClientID, parseID
from imapreferral.imap.policy import ServerPolicy
from imapreferral.imap.proxying import (
    ProxiedLogin,
    acceptForwardedID,
    forwardedClient,
    localBackendLogin,
)
from imapreferral.imap.responses import renderOutcome, sanitiseText
from imapreferral.imap.syntax import (
    literalSizeValid,
    parseQuoted,
    validTag,
    withoutInternals,
)
from imapreferral.limits import ConnectionLimiter
from imapreferral.login.attempt import LoginAttempts
from imapreferral.login.client import byeBeforeReferral, recogniseClient
from imapreferral.login.context import LoginContext
from imapreferral.login.credentials import PasswordCredentials
from imapreferral.login.guard import PreLoginGuard
from imapreferral.login.immediate import isWaiting
from imapreferral.login.logline import logRefusal
from imapreferral.login.outcome import (
    AuthorizationRefused,
    LoggedIn,
    Outcome,
    PlaintextUnavailable,
    PrivacyRequired,
    ProxyLogin,
    Refer,
    Unavailable,
)
from imapreferral.login.sasl import MECHANISMS, Challenge, SASLExchange, SASLFailed, SASLStep
from imapreferral.logtext import sessionSystem
from imapreferral.proxy.connect import BackendConnector
from imapreferral.shutdown import SHUTTING_DOWN
from imapreferral.sockwrite import writeNow

_log = Logger()

_TOO_MANY_FAILURES = b"Too many authentication failures."

_ALWAYS = {b"SASL-IR": None, b"LOGIN-REFERRALS": None, b"ID": None}

#: Tags kept for client recognition: enough to see a pattern, bounded.
_TAGS_KEPT = 16
#: Bytes kept of each: one more than c-client's tags, so longer ones differ.
_TAG_BYTES_KEPT = 9


def _isTLS(transport: object) -> bool:
    """
    Whether the transport is TLS: C{ISSLTransport} for Twisted's C{ssl:}
    endpoints, C{INegotiated} for C{TLSMemoryBIOProtocol} (implicit TLS
    listeners), which provides no C{ISSLTransport} and copies the TCP
    transport's C{ITLSTransport}.
    """
    return ISSLTransport.providedBy(transport) or INegotiated.providedBy(transport)


@implementer(IHandshakeListener)
def _loginName(credentials: object) -> str | None:
    """The name the client logged in with, as the login line writes it."""
    name = getattr(credentials, "username", None)
    return name.decode("utf-8", "surrogateescape") if isinstance(name, bytes) else None


class ReferralIMAP4Server(IMAP4Server):
    """
    An IMAP4rev1 server whose logins go through L{LoginAttempts}.

    @ivar attempts: Runs logins (portal, failure delay, clock).
    @ivar policy: What this listener allows; see L{ServerPolicy}.
    @ivar limiter: Counts connections across the listener, or L{None}.
    @ivar guard: The connection's pre-login guard (admission, time limit,
        budgets, back-pressure, plaintext policy); we word its decisions.
    @ivar connector: Logs in to proxy backends, or L{None}: then a C{proxy}
        login is a temporary failure.
    @ivar capabilityAsked: Whether the client sent C{CAPABILITY} before
        logging in (a proxied login then sends the backend's first).
    """

    #: Lines end at LF; a CR before it is dropped in L{lineReceived}. RFC 3501
    #: says CRLF, but Dovecot (and C{nc} users typing by hand) accept a bare
    #: LF. What we send still ends in CRLF (L{sendLine}).
    delimiter = b"\n"

    def __init__(
        self,
        attempts: LoginAttempts,
        policy: ServerPolicy | None = None,
        limiter: ConnectionLimiter | None = None,
        connector: BackendConnector | None = None,
    ) -> None:
        policy = policy if policy is not None else ServerPolicy()
        super().__init__(chal={}, contextFactory=policy.tlsContext)
        self.attempts = attempts
        self.policy = policy
        self.limiter = limiter
        self.IDENT = policy.greeting
        self.timeOut = policy.preauthIdle
        self.MAX_LENGTH = policy.maxLineLength
        self.callLater = attempts.clock.callLater  # TimeoutMixin's idle timer
        self.guard = PreLoginGuard(
            self,
            attempts.clock,
            limiter,
            lifetime=policy.preauthLifetime,
            maxBadCommands=policy.maxBadCommands,
            maxAuthFailures=policy.maxAuthFailures,
            plaintextAuth=policy.plaintextAuth,
            trustedNetworks=policy.trustedNetworks,
        )
        self._pendingLogin: Deferred[None] | None = None
        self._sasl: tuple[bytes, SASLExchange] | None = None
        self.connector = connector
        self.capabilityAsked = False
        self._proxy: ProxiedLogin | None = None
        self._idSeen = False
        self._idName: str | None = None
        self._tags: list[bytes] = []
        self.proxyTTL = DEFAULT_PROXY_TTL
        #: L{None}, or C{"draining"} / C{"over"} once the server is stopping.
        self._shutdown: str | None = None
        #: Lines said while a pre-login read is handled, sent as one write
        #: when it is done (L{dataReceived}); L{None} outside.
        self._output: list[bytes] | None = None
        #: Whether the transport is TLS from the start (L{_isTLS}, read once).
        self._implicitTLS = False

    # Connection guards

    def connectionMade(self) -> None:
        if self.policy.greetingReferral is not None:
            self.transport.write(
                b"* BYE [REFERRAL " + self.policy.greetingReferral.encode("ascii") + b"] "
                + sanitiseText(self.policy.greetingReferralReason, "Server moved.") + b"\r\n"
            )  # fmt: skip
            self.transport.loseConnection()
            return
        refusal = self.guard.admit()
        if refusal is not None:
            self.transport.write(b"* BYE [UNAVAILABLE] " + refusal.encode("ascii") + b"\r\n")
            self.transport.loseConnection()
            return
        # Implicit TLS: back-pressure once the handshake is done (handshakeCompleted).
        self._implicitTLS = _isTLS(self.transport)
        self.guard.start(handshakePending=self._implicitTLS)
        super().connectionMade()

    def sendServerGreeting(self) -> None:
        """
        Twisted's greeting (C{* OK [CAPABILITY ...] text}), made once per
        kind of connection and kept in the policy: it depends only on the
        policy, on whether STARTTLS can start and plaintext is allowed, and
        on TLS. A subclass that changes L{capabilities} gets Twisted's own.
        """
        if type(self).capabilities is not ReferralIMAP4Server.capabilities:
            super().sendServerGreeting()
            return
        key = (self._canStartTLS(), self._plaintextAllowed(), self._secured())
        greeting = self.policy.greetings.get(key)
        if greeting is None:
            greeting = b"* OK [CAPABILITY " + self._capabilityList() + b"] " + self.IDENT
            self.policy.greetings[key] = greeting
        self.sendLine(greeting)

    @property
    def _lost(self) -> bool:
        return self.guard.lost

    def handshakeCompleted(self) -> None:
        """C{IHandshakeListener}: the implicit-TLS handshake is done."""
        self.guard.startBackPressure()

    def preLoginExpired(self) -> None:
        """The guard's pre-login time limit ran out."""
        self._bye(b"Pre-login time limit exceeded.")

    def holdLines(self, hold: bool) -> None:
        """For the guard: stop running received lines, or run what waited."""
        if self.paused != hold:
            self.paused = hold
            if not hold:
                self.dataReceived(b"")

    def _bye(self, text: bytes) -> None:
        """Say goodbye (RFC 3501 §7.1.5) and close; nothing more is read."""
        self.sendLine(b"* BYE " + text)
        self._close()

    def _close(self) -> None:
        """Close after what was written, reading nothing more."""
        self.blocked = None
        self.clearLineBuffer()
        self.guard.close()
        self.flushOutput()
        self.transport.loseConnection()

    def timeoutConnection(self) -> None:
        """The idle timer: Twisted's words, our way of closing."""
        self.guard.idleTimedOut()
        self._bye(b"Autologout; connection idle too long")

    def lineLengthExceeded(self, line: bytes) -> None:
        self._bye(b"Too long argument.")

    def sendBadResponse(self, tag: bytes | None = None, message: bytes = b"") -> None:
        """Every pre-login BAD counts; Dovecot's budget is 10."""
        super().sendBadResponse(tag, withoutInternals(message))
        if self.guard.badCommand():
            self._bye(b"Too many invalid IMAP commands.")

    def sendNegativeResponse(self, tag: bytes | None = None, message: bytes = b"") -> None:
        super().sendNegativeResponse(tag, withoutInternals(message))

    def dispatchCommand(
        self, tag: bytes, cmd: bytes, rest: bytes | None, uid: bytes | None = None
    ) -> None:
        """
        Before login, run a command whose arguments are all on its line
        without Twisted's Deferred per argument: each parser answers at
        once, and an C{IllegalClientResponse} it raises gets Twisted's
        C{BAD Illegal syntax} from C{parse_command}. A line ending in a
        literal (C{{n}}), and every command after login, go Twisted's way.
        """
        command = self.lookupCommand(cmd) if self.state == "unauth" else None
        if command is None or (rest or b"").rstrip().endswith(b"}"):
            super().dispatchCommand(tag, cmd, rest, uid)
            return
        handler, *parsers = command
        args: list[object] = [self, tag]
        line = rest
        for parse in parsers:
            if callable(parse):
                value, line = parse(self, line)
                args.append(value)
            else:
                args.append(parse)
        if line:
            raise IllegalClientResponse("Too many arguments for command: " + repr(line))
        handler(*args)

    def lookupCommand(self, cmd: bytes) -> Any:
        """Command names are ASCII words; Twisted's lookup fails on others."""
        if not (cmd.isascii() and cmd.isalnum()):
            return None
        return super().lookupCommand(cmd)

    # Capabilities and TLS

    def capabilities(self) -> dict[bytes, list[bytes] | None]:
        """
        Advertise what we implement. Before login: C{SASL-IR
        LOGIN-REFERRALS ID}, C{STARTTLS} when it can be started, and the
        C{AUTH=} mechanisms, without the plaintext ones (and with
        C{LOGINDISABLED}) where the plaintext policy forbids them. After
        login also what Twisted's authenticated state offers.
        """
        caps: dict[bytes, list[bytes] | None] = dict(_ALWAYS)
        if self.state != "unauth":
            caps[b"NAMESPACE"] = None
            caps[b"IDLE"] = None
            return caps
        if self._canStartTLS():
            caps[b"STARTTLS"] = None
        if not (self._plaintextAllowed() and self.policy.passwordsCheckable):
            caps[b"LOGINDISABLED"] = None
        mechanisms = self.guard.offeredMechanisms(self.policy.mechanisms, self._secured())
        caps[b"AUTH"] = [m.encode("ascii") for m in mechanisms]
        return caps

    def _secured(self) -> bool:
        return bool(self.startedTLS) or self._implicitTLS

    def _canStartTLS(self) -> bool:
        return bool(self.ctx and self.canStartTLS and not self._secured())

    def _plaintextAllowed(self) -> bool:
        return self.guard.plaintextAllowed(self._secured())

    def do_STARTTLS(self, tag: bytes) -> None:
        """
        Start TLS. Plaintext the client pipelined behind C{STARTTLS} is
        dropped, not run inside the TLS session (CVE-2011-0411; stock
        Twisted runs it). On a TLS connection, C{BAD} rather than a hang.
        """
        if self._secured():
            self.sendBadResponse(tag, b"TLS is already active.")
            return
        if not self._canStartTLS():
            self.sendNegativeResponse(tag, b"TLS support isn't enabled.")
            return
        self.clearLineBuffer()
        self.sendPositiveResponse(tag, b"Begin TLS negotiation now.")
        self.flushOutput()  # in plaintext, before TLS starts
        self.transport.startTLS(self.ctx)
        self.startedTLS = True

    unauth_STARTTLS = (do_STARTTLS,)

    def _context(self, mechanism: str) -> LoginContext:
        """Where this login comes from, and how (L{PreLoginGuard.loginContext})."""
        return self.guard.loginContext(mechanism, self._secured())

    def _loginContext(self, mechanism: str) -> LoginContext:
        """
        The context a login's credentials carry: L{_context}, with the
        client recognised from its tags and C{ID} so far.
        """
        client = recogniseClient(self._tags, self._idName, self.policy.referralClientNames)
        return self.guard.loginContext(mechanism, self._secured(), client)

    # ID (RFC 2971)

    def do_ID(self, tag: bytes, line: bytes | None) -> None:
        """Log what the client says about itself; say who we are."""
        try:
            fields = parseID(line or b"")
        except ValueError:
            self.sendBadResponse(tag, b"Invalid ID parameters.")
            return
        if not self._idSeen and self.state == "unauth" and self.guard.fromTrustedNetwork():
            acceptForwardedID(self, fields)  # first: the ID line is the forwarded session's too
        if fields:
            logClientID(self.guard.addresses(), fields)
        if self.state == "unauth":
            names = [value for key, value in fields if key.lower() == "name"]
            self._idName = names[0] if names else None
        self._idSeen = True
        if self.guard.closing:
            return
        self.sendUntaggedResponse(formatID(self.policy.idFields))
        self.sendPositiveResponse(tag, b"ID completed.")

    unauth_ID = (do_ID, IMAP4Server.arg_line)
    auth_ID = unauth_ID
    select_ID = unauth_ID

    # LOGIN

    def do_LOGIN(self, tag: bytes, user: bytes, passwd: bytes) -> None:
        if not self.policy.passwordsCheckable:
            self._refuse(tag, PlaintextUnavailable(), "PLAIN")
            return
        if not self._plaintextAllowed():
            self._refuse(tag, PrivacyRequired(), "PLAIN")
            return
        self._login(tag, PasswordCredentials(user, passwd, self._loginContext("PLAIN")), "PLAIN")

    def _refuse(
        self,
        tag: bytes,
        outcome: PrivacyRequired | PlaintextUnavailable | AuthorizationRefused,
        mechanism: str,
    ) -> None:
        """A login refused before any check: logged and answered."""
        logRefusal(self.guard.addresses(), mechanism, outcome)
        self._reply(tag, outcome, mechanism)

    def arg_loginUser(self, line: bytes | None) -> object:
        """C{arg_astring}, but a missing argument is a plain syntax error."""
        if not line:
            raise IllegalClientResponse("Missing user name and password")
        return self.arg_astring(line)

    def arg_astring(self, line: bytes, final: bool = False) -> object:
        """
        As Twisted's, but a quoted string's C{\\"} and C{\\\\} escapes (RFC
        3501 §9) are undone: Twisted splits at the first quote and keeps the
        backslashes, so a password with a quote or backslash never matched.
        """
        stripped = (line or b"").strip()
        if stripped.startswith(b'"'):
            quoted = parseQuoted(stripped)
            if quoted is None:
                raise IllegalClientResponse("Unmatched quotes or bad escape")
            return quoted
        return IMAP4Server.arg_astring(self, line, final)

    unauth_LOGIN = (do_LOGIN, arg_loginUser, IMAP4Server.arg_finalastring)

    # AUTHENTICATE

    def do_AUTHENTICATE(self, tag: bytes, line: bytes) -> None:
        args = (line or b"").split()
        if not 1 <= len(args) <= 2:
            self.sendBadResponse(tag, b"Invalid AUTHENTICATE arguments.")
            return
        name = args[0].upper().decode("ascii", "replace")
        if name not in self.policy.mechanisms:
            self.sendNegativeResponse(tag, b"Unsupported authentication mechanism.")
            return
        if self.guard.refusesPlaintext(name, self._secured()):
            self._refuse(tag, PrivacyRequired(), name)
            return
        exchange = SASLExchange(MECHANISMS[name](self._loginContext(name), self.policy.hostname))
        self._step(tag, exchange, exchange.begin(args[1] if len(args) == 2 else None))

    unauth_AUTHENTICATE = (do_AUTHENTICATE, IMAP4Server.arg_line)

    def parse_sasl(self, line: bytes) -> None:
        """A continuation line of AUTHENTICATE."""
        assert self._sasl is not None
        tag, exchange = self._sasl
        self._sasl = None
        self.parseState = "command"
        self._step(tag, exchange, exchange.respond(line))

    def _step(self, tag: bytes, exchange: SASLExchange, step: SASLStep) -> None:
        if isinstance(step, SASLFailed):
            self.sendBadResponse(tag, step.text.encode("ascii"))
        elif isinstance(step, AuthorizationRefused):
            self._refuse(tag, step, exchange.mechanism.name)
        elif isinstance(step, Challenge):
            self._sasl = (tag, exchange)
            self.parseState = "sasl"
            self.sendLine(b"+ " + b64encode(step.data))
        else:
            self._login(tag, step, exchange.mechanism.name, sasl=True)

    # The shared login path

    def _login(self, tag: bytes, credentials: object, mechanism: str, sasl: bool = False) -> None:
        """
        Run one login. Input pipelined behind it stays unread until its reply
        is out (we stop reading; literals and STARTTLS then work as usual).

        @param sasl: Whether it came by C{AUTHENTICATE} (else C{LOGIN}).
        """
        self.guard.holdInput()
        username = credentials.username.decode("utf-8", "replace")  # type: ignore[attr-defined]
        result = self.attempts.attemptNow(credentials, username)
        if not isWaiting(result):  # the usual case: no Deferred (imapreferral.login.immediate)
            try:
                self._loginDone(result, tag, mechanism, credentials, sasl)
            except Exception:
                self._loginError(Failure(), tag)
            self._loginFinished(None)
            return
        self._pendingLogin = result
        result.addCallback(self._loginDone, tag, mechanism, credentials, sasl)
        result.addErrback(self._loginError, tag)
        result.addBoth(self._loginFinished)

    def _auth(self, mechanism: str) -> str:
        """What a referral URL's C{;AUTH=} says: the mechanism, or C{*}."""
        return "*" if self.policy.referralAuth == "*" else mechanism

    def _loginDone(
        self,
        outcome: Outcome,
        tag: bytes,
        mechanism: str,
        credentials: object = None,
        sasl: bool = False,
    ) -> None:
        local = self.policy.localBackend
        if isinstance(outcome, LoggedIn) and local is not None and self.connector is not None:
            outcome = localBackendLogin(local, outcome, credentials)
        if isinstance(outcome, ProxyLogin) and self.connector is not None:
            if not self._lost:
                self._proxy = ProxiedLogin(
                    self, tag, outcome, self._auth(mechanism), _loginName(credentials)
                )
                self._proxy.start(self.connector, forwardedClient(self, self.proxyTTL))
            return
        if isinstance(outcome, LoggedIn):
            if self._lost:
                outcome.logout()
                return
            self.account = outcome.avatar
            self._onLogout = outcome.logout
            self.state = "auth"
            # Twisted's authenticated commands write to the transport
            # themselves: from here on each line goes out as it is said.
            self.flushOutput(stop=True)
            self.setTimeout(self.POSTAUTH_TIMEOUT)
            self.guard.leave()
        client = getattr(getattr(credentials, "context", None), "client", "")
        self._reply(tag, outcome, mechanism, byeFirst=byeBeforeReferral(client, sasl))

    def _reply(self, tag: bytes, outcome: Outcome, mechanism: str, byeFirst: bool = False) -> None:
        """
        The tagged reply to a login: the one place login results become
        bytes; then goodbye if it spent the failed-authentication budget.

        @param byeFirst: A referral goes as c-client's one-prompt form
            (L{byeBeforeReferral}): C{* BYE} with the same code and text,
            the tagged C{NO}, then the connection closes.
        """
        status, text = renderOutcome(outcome, self._auth(mechanism), self._capabilityList)
        if byeFirst and isinstance(outcome, Refer):
            self.sendLine(b"* BYE " + text)
            self._respond(status, tag, text)
            self._close()
            return
        self._respond(status, tag, text)
        if self.guard.loginFailed(outcome):
            self._bye(_TOO_MANY_FAILURES)

    # Proxying (imapreferral.imap.proxying)

    def enterRelay(self) -> None:
        """The backend took the login: no pre-login timers, only relaying from now."""
        self.flushOutput(stop=True)
        self.setTimeout(None)
        self.state = "proxied"
        self.guard.leave()

    def clientForwarded(self, addresses: LoginContext) -> None:
        """
        A trusted proxy named the real client (its C{ID}): it counts from
        now on, against its own address's limit.
        """
        refusal = self.guard.forwardedFrom(addresses)
        if refusal is not None:
            self._bye(b"[UNAVAILABLE] " + refusal.encode("ascii"))

    def proxyFailed(self, authFailed: bool) -> None:
        """The backend login failed and the client was told: read on."""
        self._proxy = None
        if authFailed and self.guard.authFailed():
            self._bye(_TOO_MANY_FAILURES)
        self._loginFinished(None)

    def do_CAPABILITY(self, tag: bytes) -> None:
        if self.state == "unauth":
            self.capabilityAsked = True
        IMAP4Server.do_CAPABILITY(self, tag)

    unauth_CAPABILITY = (do_CAPABILITY,)

    def _capabilityList(self) -> bytes:
        return b" ".join(self.listCapabilities())

    def _loginError(self, failure: Failure, tag: bytes) -> None:
        if failure.check(CancelledError) or self._lost:
            return
        session = self.guard.addresses().session
        _log.failure(
            "login failed unexpectedly",
            failure,
            session=session,
            log_system=sessionSystem(_log.namespace, "critical", session),
        )
        self._reply(tag, Unavailable("unexpected error"), "")

    def _loginFinished(self, _: object) -> None:
        self._pendingLogin = None
        if self._proxy is not None:
            return  # input stays held until the backend answers
        self.guard.loginFinished()
        if self._shutdown is not None and not self._closing():
            if self.state == "unauth" or self._shutdown == "over":
                self._bye(SHUTTING_DOWN)

    # Shutdown (imapreferral.shutdown)

    def shutDown(self) -> None:
        """
        The server is stopping: before login, goodbye now, or right after
        the answer to the login in flight; a session goes on until
        L{graceOver}.
        """
        self._shutdown = "draining"
        inFlight = self._pendingLogin is not None or self._proxy is not None
        if self.state == "unauth" and not inFlight and not self._closing():
            self._bye(SHUTTING_DOWN)

    def graceOver(self) -> None:
        """The shutdown grace is over: close, unless a login is still being answered."""
        self._shutdown = "over"
        if self._proxy is not None and self._proxy.relay is not None:
            self._proxy.close()
        elif self._pendingLogin is None and self._proxy is None and not self._closing():
            self._bye(SHUTTING_DOWN)

    def _closing(self) -> bool:
        """Whether the connection is already going (a goodbye said, or refused at admission)."""
        return (
            self.guard.closing or self._lost or bool(getattr(self.transport, "disconnecting", 0))
        )

    def relayStarted(self) -> None:
        """A proxied session began; after the shutdown grace it ends at once."""
        if self._shutdown == "over" and self._proxy is not None:
            self._proxy.close()

    def dataReceived(self, data: bytes) -> None:
        """
        Run what arrived. Before login, the lines said in answer go out as
        one write when it has run (L{flushOutput}): a reply and what
        pipelined commands add to it cost one C{send}, not one each.
        """
        if self._proxy is not None and self._proxy.relay is not None:
            self._proxy.dataReceived(data)
            return
        if self._output is not None or self.state != "unauth":
            super().dataReceived(data)  # nested (held lines resumed), or logged in
            self.guard.received(len(self._buffer))
            return
        self._output = []
        try:
            super().dataReceived(data)
            self.guard.received(len(self._buffer))
        finally:
            self.flushOutput(stop=True)

    def flushOutput(self, stop: bool = False) -> None:
        """
        Send the lines gathered so far (L{dataReceived}), in one write.

        @param stop: Also stop gathering: later lines go out as said (the
            read is over, or the connection leaves the pre-login state,
            where other code writes to the transport directly).
        """
        output = self._output
        if output is None:
            return
        self._output = None if stop else []
        if output:
            writeNow(self.transport, b"".join(output))

    def writeRaw(self, data: bytes) -> None:
        """Write bytes that are not one line, after every line said so far."""
        self.flushOutput()
        writeNow(self.transport, data)

    # Errors

    def sendLine(self, line: bytes) -> None:
        """Every line we send ends in CRLF, whatever ends the client's lines."""
        if self._output is not None:
            self._output.append(line + b"\r\n")
        else:
            writeNow(self.transport, line + b"\r\n")

    def lineReceived(self, line: bytes) -> None:
        """
        As Twisted's, but an unexpected error is logged with its traceback
        and the client gets a fixed text, not the exception's.
        """
        if self.guard.closing:
            return
        if line.endswith(b"\r"):
            line = line[:-1]
        if self.blocked is not None:  # Twisted's own pipelining guard, after login
            self.blocked.append(line)
            return
        self.resetTimeout()
        if self.parseState == "command":
            tag = line.split(b" ", 1)[0]
            if self.state == "unauth" and len(self._tags) < _TAGS_KEPT:
                # Enough to tell c-client's eight hex digits from the rest.
                self._tags.append(tag[:_TAG_BYTES_KEPT])
            if tag and not validTag(tag):
                # Echoing it would put controls, "*" or "+" where a tag goes.
                self.sendBadResponse(None, b"Invalid tag.")
                return
            if not literalSizeValid(line):
                # RFC 3501 §9: number = 1*DIGIT; Twisted's int() takes more.
                self.sendBadResponse(tag or None, b"Invalid literal size.")
                return
        try:
            getattr(self, "parse_" + self.parseState)(line)
        except Exception:
            session = self.guard.addresses().session
            _log.failure(
                "error while handling a command line",
                session=session,
                log_system=sessionSystem(_log.namespace, "critical", session),
            )
            self.sendBadResponse(None, b"Internal server error.")

    # Session end

    def do_LOGOUT(self, tag: bytes) -> None:
        self.sendUntaggedResponse(b"BYE Logging out")
        self.sendPositiveResponse(tag, b"Logout completed.")
        self._close()

    unauth_LOGOUT = (do_LOGOUT,)
    auth_LOGOUT = unauth_LOGOUT
    select_LOGOUT = unauth_LOGOUT
    logout_LOGOUT = unauth_LOGOUT

    def connectionLost(self, reason: Failure) -> None:
        self.guard.connectionLost()
        if self._proxy is not None:
            self._proxy.connectionLost(reason)
        if self._pendingLogin is not None:
            self._pendingLogin.cancel()
        super().connectionLost(reason)
        if self.factory is not None and hasattr(self.factory, "connectionEnded"):
            self.factory.connectionEnded(self)
