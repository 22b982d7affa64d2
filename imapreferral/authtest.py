"""
C{imapreferral auth test} and C{auth lookup}: one login run through the
server's own parts, and what it came to in words.

L{ServerParts} is the server as C{twistd imapreferral} would build it from
the same options (L{imapreferral.tap.makeService}), started without its
listeners: the same passdbs, password verifier, checker and C{decide()}.
L{runLogin} runs a C{LOGIN} through the portal as the server does
(L{LoginAttempts}), without the failure delay or the per-address penalty,
and renders the outcome with the server's L{renderOutcome}. Which passdb
answered is seen by wrapping each in L{_Traced}, and each C{--auth} checker
in L{_TracedChecker}: the checker itself is not told it is being watched.
What the server refuses before asking anyone (a plaintext login without
TLS from outside C{--trusted-networks}) and before contacting a backend (a
proxy to one of its own listeners) is refused here by the same rules.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import CancelledError, Deferred, DeferredList, maybeDeferred
from twisted.mail.imap4 import IAccount
from zope.interface import implementer

from imapreferral.authplugins import AuthChecker
from imapreferral.imap.backendresult import CONNECT, BackendMisconfigured
from imapreferral.imap.factory import ReferralServerFactory
from imapreferral.imap.proxying import localBackendLogin
from imapreferral.imap.responses import renderBackendResult, renderOutcome
from imapreferral.interfaces import IPassdb, IReferralCarrier
from imapreferral.listeners import SYSTEMD_PREFIX
from imapreferral.login.attempt import LoginAttempts
from imapreferral.login.chain import CheckerChain
from imapreferral.login.checker import PassdbChecker, normaliseUsername
from imapreferral.login.client import AUTO, REFER, UNKNOWN
from imapreferral.login.context import LoginContext
from imapreferral.login.credentials import PasswordCredentials
from imapreferral.login.errors import LoginDisabled, LoginProxied, TemporaryFailure
from imapreferral.login.fields import _PROXY_FIELDS, PassdbReply, ProxyFields, _redactedPassword
from imapreferral.login.guard import plaintextAllowed
from imapreferral.login.outcome import (
    Disable,
    LoggedIn,
    Outcome,
    PlaintextUnavailable,
    PrivacyRequired,
    ProxyDestination,
    ProxyLogin,
    Refer,
    Unavailable,
)

#: Exit statuses of C{auth test} and C{auth lookup} (doveadm's meaning).
SUCCESS, FAILURE, TEMPFAIL = 0, 1, 2

#: The tag of the C{LOGIN} whose reply we show.
TAG = b"a"

#: PassdbReply attribute -> Dovecot field name, where they differ.
_NAMES = {"proxyMaybe": "proxy_maybe"}
_PROXY_NAMES = {attribute: key for key, (attribute, _) in _PROXY_FIELDS.items()}


def _shown(key: str, value: object) -> tuple[str, str | None] | None:
    """One field as Dovecot writes it; L{None} for an absent one."""
    if value is None or value is False or value == ():
        return None
    if value is True:
        return (key, None)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return (key, str(value))


def replyFields(reply: PassdbReply) -> list[tuple[str, str | None]]:
    """
    A passdb reply as Dovecot fields, C{(key, value-or-None)}, in a fixed
    order; the password shows only its scheme (C{{BLF-CRYPT}***}), C{pass}
    only that it is there.
    """
    fields: list[tuple[str, str | None]] = []
    for field in attrs.fields(PassdbReply):
        value = getattr(reply, field.name)
        if field.name == "password":
            if value is not None:
                fields.append(("password", _redactedPassword(value).strip("'")))
        elif field.name == "proxyFields":
            fields.extend(_proxyFields(value))
        elif field.name == "extra":
            fields.extend(value)
        else:
            shown = _shown(_NAMES.get(field.name, field.name), value)
            if shown is not None:
                fields.append(shown)
    return fields


def _proxyFields(proxy: ProxyFields) -> list[tuple[str, str | None]]:
    fields: list[tuple[str, str | None]] = []
    for field in attrs.fields(ProxyFields):
        value = getattr(proxy, field.name)
        if field.name == "forward":
            fields.extend((f"forward_{key}", text) for key, text in value)
        elif field.name == "password":
            if value is not None:
                fields.append(("pass", "***"))
        else:
            shown = _shown(_PROXY_NAMES.get(field.name, field.name), value)
            if shown is not None:
                fields.append(shown)
    return fields


def formatFields(fields: Sequence[tuple[str, str | None]]) -> str:
    """C{key=value key flag} as in a passwd-file's extra fields."""
    return " ".join(key if value is None else f"{key}={value}" for key, value in fields)


@attrs.frozen
class PassdbAnswer:
    """
    What one passdb said about the user: a reply, L{None} (not known), or
    the error that made it unavailable.
    """

    passdb: str
    reply: PassdbReply | None = None
    error: str | None = None

    @property
    def source(self) -> str:
        return self.passdb

    @property
    def found(self) -> bool:
        """Whether it knew the user: the passdb that decides is one that did."""
        return self.reply is not None

    def lines(self) -> list[str]:
        if self.error is not None:
            return [f"passdb {self.passdb}: unavailable: {self.error}"]
        if self.reply is None:
            return [f"passdb {self.passdb}: user unknown"]
        fields = formatFields(replyFields(self.reply)) or "(no fields)"
        return [f"passdb {self.passdb}: found", f"  {fields}"]


@attrs.frozen
class CheckerAnswer:
    """
    What one C{--auth} checker said: a C{twisted.cred} checker answers a
    password check only, with an avatar id (logged in) or a refusal; it
    has no fields to show, and its errors are shown by type (their text may
    quote its arguments or the password, as L{CheckerChain} logs them).

    @ivar answer: The words for what it said; L{None}: it was not asked
        (C{auth lookup} checks no password).
    """

    checker: str
    answer: str | None = None
    found: bool = False
    error: str | None = None

    @property
    def source(self) -> str:
        return self.checker

    def lines(self) -> list[str]:
        if self.answer is None:
            return [
                f"checker {self.checker}: not asked (a twisted.cred checker only checks a "
                "password: use auth test)"
            ]
        return [f"checker {self.checker}: {self.answer}"]


Answer = PassdbAnswer | CheckerAnswer


@implementer(IPassdb)
class _Traced:
    """A passdb that notes every answer it gives in C{answers}."""

    def __init__(self, passdb: Any, answers: list[Answer]) -> None:
        self.passdb = passdb
        self.answers = answers

    def lookup(self, username: str, context: LoginContext) -> Deferred[PassdbReply | None]:
        d = maybeDeferred(self.passdb.lookup, username, context)
        d.addCallbacks(self._found, self._failed)
        return d

    def _found(self, reply: PassdbReply | None) -> PassdbReply | None:
        self.answers.append(PassdbAnswer(repr(self.passdb), reply))
        return reply

    def _failed(self, failure: Any) -> Any:
        if not failure.check(CancelledError):
            self.answers.append(PassdbAnswer(repr(self.passdb), error=str(failure.value)))
        return failure

    def canProvidePlaintext(self) -> bool:
        return bool(self.passdb.canProvidePlaintext())

    def __repr__(self) -> str:
        return repr(self.passdb)


@implementer(ICredentialsChecker)
class _TracedChecker:
    """An C{--auth} checker that notes every answer it gives in C{answers}."""

    def __init__(self, checker: Any, name: str, answers: list[Answer]) -> None:
        self.checker = checker
        self.name = name
        self.answers = answers
        self.credentialInterfaces = checker.credentialInterfaces

    def requestAvatarId(self, credentials: object) -> Deferred[object]:
        d = maybeDeferred(self.checker.requestAvatarId, credentials)
        d.addCallbacks(self._loggedIn, self._failed)
        return d

    def _loggedIn(self, avatarId: object) -> object:
        self.answers.append(CheckerAnswer(self.name, "password accepted", found=True))
        return avatarId

    def _failed(self, failure: Any) -> Any:
        if failure.check(CancelledError):
            return failure
        if failure.check(TemporaryFailure):
            answer = CheckerAnswer(self.name, f"unavailable: {failure.value.why}", error="down")
        elif failure.check(LoginDisabled, LoginProxied) or IReferralCarrier.providedBy(
            failure.value
        ):
            answer = CheckerAnswer(self.name, f"decided: {failure.type.__name__}", found=True)
        elif failure.check(UnauthorizedLogin):
            answer = CheckerAnswer(self.name, "refused (unknown user or wrong password)")
        else:
            error = failure.type.__name__
            answer = CheckerAnswer(self.name, f"failed: {error}", error=error)
        self.answers.append(answer)
        return failure

    def __getattr__(self, name: str) -> Any:
        return getattr(self.checker, name)  # canProvidePlaintext, ...

    def __repr__(self) -> str:
        return self.name


class ServerParts:
    """
    The server C{makeService} builds from C{config}, its listeners left
    out: the passdbs (SQL pools), the password verifier and the factory
    with its portal and policy. Nothing is bound: no listener, no
    C{--metrics} page, no worker processes; a C{systemd:} listener (which
    only systemd can pass) is left out of what is built.

    @ivar sources: The passdbs and C{--auth} checkers (L{AuthChecker}), in
        the order a login asks them.
    """

    def __init__(self, config: Any, makeService: Any) -> None:
        built = dict(config)  # config itself stays as given, for config check
        built["workers"] = 1  # no worker processes: nothing listens
        built["adopt-listeners"] = 0
        built["metrics"] = None
        built["listeners"] = [
            listener
            for listener in config["listeners"]
            if not listener.endpoint.startswith(SYSTEMD_PREFIX)
        ]
        service = makeService(built)
        self.factory: ReferralServerFactory = service.factory
        self.sources: Sequence[Any] = config["sources"]
        self.passdbs: Sequence[Any] = config["passdb"]
        self.lowercase = not config["keep-username-case"]
        self.referralMode: str = config["referral-mode"]
        self.followers: Sequence[str] = config["referral-client-names"]
        self._parts = [s for s in service if not isinstance(s, StreamServerEndpointService)]
        self.answers: list[Answer] = []
        names = {id(s.checker): repr(s) for s in self.sources if isinstance(s, AuthChecker)}
        checker = self.factory.portal.checkers.get(IUsernamePassword)
        if isinstance(checker, CheckerChain):
            checker.checkers = tuple(self._traced(c, names) for c in checker.checkers)
        elif checker is not None:
            self._traced(checker, names)

    def _traced(self, checker: Any, names: dict[int, str]) -> Any:
        """C{checker}, its answers noted: a L{PassdbChecker}'s passdbs each, else itself."""
        if isinstance(checker, PassdbChecker):
            checker.passdbs = tuple(_Traced(p, self.answers) for p in checker.passdbs)
            return checker
        return _TracedChecker(checker, names.get(id(checker), repr(checker)), self.answers)

    def start(self) -> None:
        for part in self._parts:
            part.startService()

    def stop(self) -> Deferred[Any]:
        return DeferredList([maybeDeferred(IService(p).stopService) for p in self._parts])

    def capabilities(self) -> bytes:
        """What the server advertises after a login, for C{OK [CAPABILITY ...]}."""
        protocol = self.factory.buildProtocol(None)  # type: ignore[arg-type]
        protocol.state = "auth"
        return b" ".join(protocol.listCapabilities())


def loginContext(
    remoteIP: str | None, localIP: str | None, localPort: int | None, secured: bool = False
) -> LoginContext:
    """
    Where the tested login comes from: what SQL's C{%r}, C{%l},
    C{proxy_maybe} and the plaintext rule see. Addresses are normalised as
    a socket gives them.

    @param secured: Whether the client connected over TLS.
    """

    def normal(address: str | None) -> str | None:
        return None if address is None else str(ipaddress.ip_address(address))

    return LoginContext(
        remoteIP=normal(remoteIP), localIP=normal(localIP), localPort=localPort, secured=secured
    )


@attrs.frozen
class TestedLogin:
    """
    A tested login: what each passdb and checker said, which one decided,
    the outcome and the tagged reply.

    @ivar backendFailure: Why the proxy login is refused before any backend
        is contacted (a loop to ourselves), else L{None}.
    @ivar follower: In C{--referral-mode auto}, when this client is proxied
        instead of referred: what a client that follows referrals gets
        (C{(its name, its login)}), else L{None}.
    """

    answers: tuple[Answer, ...]
    outcome: Outcome
    reply: bytes
    greetingReferral: str | None = None
    backendFailure: str | None = None
    follower: tuple[str, TestedLogin] | None = None
    referralMode: str = REFER

    @property
    def decidedBy(self) -> str | None:
        """
        The passdb or checker whose answer decided: the checker stops at the
        first that logs in, refers, proxies or disables, so the last one
        asked when the outcome is one of those.
        """
        if not isinstance(self.outcome, _DECIDED) or not self.answers:
            return None
        last = self.answers[-1]
        return last.source if last.found else None

    @property
    def status(self) -> int:
        own = SUCCESS
        if isinstance(self.outcome, Unavailable) or self.backendFailure is not None:
            own = TEMPFAIL
        elif not isinstance(self.outcome, LoggedIn | Refer | ProxyLogin):
            own = FAILURE
        return max(own, self.follower[1].status if self.follower else SUCCESS)

    def lines(self) -> list[str]:
        lines = [line for answer in self.answers for line in answer.lines()]
        if isinstance(self.outcome, PrivacyRequired | PlaintextUnavailable):
            lines.append("refused before any passdb or checker is asked")
        elif not self.answers:
            lines.append("no passdb was asked")
        lines.append(f"decided by: {self.decidedBy or 'no passdb'}")
        lines += self._result()
        if self.follower is not None:
            names, login = self.follower
            lines.append(f"a client that follows referrals ({names}):")
            lines += [f"  {line}" for line in login._result()]
        if self.greetingReferral is not None:
            lines.append(
                f"but: --greeting-referral sends every client to {self.greetingReferral} "
                "(* BYE [REFERRAL ...]) before it can log in"
            )
        return lines

    def _result(self) -> list[str]:
        """The outcome and the reply (the proxy destination, for a proxy)."""
        lines = [f"outcome: {_describe(self.outcome, self.referralMode)}"]
        reply = self.reply.decode("utf-8", "replace")
        if isinstance(self.outcome, ProxyLogin):
            lines.extend(_destination(self.outcome.destination))
            if self.backendFailure is not None:
                lines.append(f"reply: {reply}")
                lines.append(f"  (the server refuses it: {self.backendFailure})")
                return lines
            lines.append("reply: the backend's answer to our login (not contacted here)")
            if self.outcome.referral is not None:
                lines.append(f"  (an OK from it is sent as: {reply})")
        else:
            lines.append(f"reply: {reply}")
        return lines


#: Outcomes some passdb or checker decided (the others: none did).
_DECIDED = LoggedIn | Refer | ProxyLogin | Disable


def _describe(outcome: Outcome, referralMode: str = REFER) -> str:
    if isinstance(outcome, LoggedIn):
        return "logged in here" + (", referral suggested" if outcome.referral else "")
    if isinstance(outcome, Refer):
        return f"referred to {outcome.referral.host}"
    if isinstance(outcome, ProxyLogin):
        instead = ""
        if outcome.insteadOf is not None:
            instead = (
                f" instead of a referral to {outcome.insteadOf.host} "
                f"(--referral-mode {referralMode}"
                + (": a client not known to follow referrals)" if referralMode == AUTO else ")")
            )
        return f"proxied to {outcome.destination.address}{instead}"
    if isinstance(outcome, Disable):
        return "login disabled"
    if isinstance(outcome, Unavailable):
        return f"temporary failure: {outcome.why}"
    if isinstance(outcome, PrivacyRequired):
        return "plaintext login refused: not TLS, and not from --trusted-networks"
    if isinstance(outcome, PlaintextUnavailable):
        return "plaintext login refused: no passdb or checker takes a cleartext password"
    return "authentication failed"


def _destination(destination: ProxyDestination) -> list[str]:
    via = f" via {destination.hostip}" if destination.hostip else ""
    master = f" (master user {destination.master})" if destination.master else ""
    return [
        f"proxy: {destination.address}{via} as {destination.user}{master}, "
        f"TLS {destination.tls}{'' if destination.verifyCertificate else ' (any certificate)'}, "
        f"timeout {destination.timeout:g} s"
    ]


async def runLogin(
    parts: ServerParts, reactor: Any, user: bytes, password: bytes, context: LoginContext
) -> TestedLogin:
    """
    Run C{LOGIN user password} as the server would, answered at once.

    The server's plaintext rule (L{plaintextAllowed}) is applied when the
    client is described: by its address (C{context.remoteIP}) or by saying
    it uses TLS (C{context.secured}); a client not described is one that
    may log in, as C{doveadm auth test} assumes. In C{--referral-mode auto}
    a client is proxied or referred by what it is: the login is run as a
    client nothing recognises, and if that one is proxied instead of
    referred, again as one that follows referrals.
    """
    tested = await _runOnce(parts, reactor, user, password, context)
    if (
        isinstance(tested.outcome, ProxyLogin)
        and tested.outcome.insteadOf is not None
        and parts.referralMode == AUTO
        and context.client == UNKNOWN
        and parts.followers
    ):
        follower = attrs.evolve(context, client=parts.followers[0])
        login = await _runOnce(parts, reactor, user, password, follower)
        names = "--referral-client-names " + ",".join(parts.followers)
        tested = attrs.evolve(tested, follower=(names, login))
    return tested


async def _runOnce(
    parts: ServerParts, reactor: Any, user: bytes, password: bytes, context: LoginContext
) -> TestedLogin:
    policy = parts.factory.policy
    del parts.answers[:]
    outcome: Outcome
    backendFailure = None
    described = context.remoteIP is not None or context.secured
    if not policy.passwordsCheckable:
        outcome = PlaintextUnavailable()
    elif described and not plaintextAllowed(
        policy.plaintextAuth, policy.trustedNetworks, context.remoteIP, context.secured
    ):
        outcome = PrivacyRequired()
    else:
        attempts = LoginAttempts(parts.factory.portal, IAccount, reactor, failureDelay=0)
        credentials = PasswordCredentials(user, password, context)
        outcome = await attempts.attempt(credentials, user.decode("utf-8", "replace"))
        local = policy.localBackend
        if isinstance(outcome, LoggedIn):
            if local is not None:
                outcome = localBackendLogin(local, outcome, credentials)
            else:
                outcome.logout()
    rendered: Outcome = outcome
    if isinstance(outcome, ProxyLogin) and outcome.referral is not None:
        # A --local-backend login that suggests a referral: its OK wording.
        rendered = LoggedIn(None, lambda: None, "", outcome.referral)
    status, text = renderOutcome(rendered, "PLAIN", parts.capabilities)
    reply = TAG + b" " + status + b" " + text
    if isinstance(outcome, ProxyLogin) and await parts.factory.connector.loopsToItself(
        outcome.destination
    ):
        backendFailure = "proxying loops to itself: that is one of our own listeners"
        refused = BackendMisconfigured(CONNECT, backendFailure)
        reply = renderBackendResult(TAG, refused).rstrip(b"\r\n")
    return TestedLogin(
        tuple(parts.answers),
        outcome,
        reply,
        policy.greetingReferral,
        backendFailure,
        referralMode=parts.referralMode,
    )


@attrs.frozen
class LookupResult:
    """C{auth lookup}: each passdb's answer for one user name (checkers: not asked)."""

    user: str
    answers: tuple[Answer, ...]

    @property
    def status(self) -> int:
        if any(answer.found for answer in self.answers):
            return SUCCESS
        if any(answer.error is not None for answer in self.answers):
            return TEMPFAIL
        return FAILURE

    def lines(self) -> list[str]:
        return [f"user: {self.user}"] + [
            line for answer in self.answers for line in answer.lines()
        ]


async def lookupUser(parts: ServerParts, user: bytes, context: LoginContext) -> LookupResult:
    """
    Ask every passdb about C{user} (normalised as for a login), no password
    checked; an C{--auth} checker, which answers only a password check, is
    named as not asked.
    """
    name = normaliseUsername(user, parts.lowercase)
    answers: list[Answer] = []
    for source in parts.sources:
        if isinstance(source, AuthChecker):
            answers.append(CheckerAnswer(repr(source)))
            continue
        try:
            reply = await source.lookup(name, context)
        except Exception as e:
            answers.append(PassdbAnswer(repr(source), error=str(e)))
        else:
            answers.append(PassdbAnswer(repr(source), reply))
    return LookupResult(name, tuple(answers))
