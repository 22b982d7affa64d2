"""
C{imapreferral auth test} and C{auth lookup}: one login run through the
server's own parts, and what it came to in words.

L{ServerParts} is the server as C{twistd imapreferral} would build it from
the same options (L{imapreferral.tap.makeService}), started without its
listeners: the same passdbs, password verifier, checker and C{decide()}.
L{runLogin} runs a C{LOGIN} through the portal as the server does
(L{LoginAttempts}), without the failure delay or the per-address penalty,
and renders the outcome with the server's L{renderOutcome}. Which passdb
answered is seen by wrapping each in L{_Traced}: the checker itself is not
told it is being watched.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService
from twisted.cred.credentials import IUsernamePassword
from twisted.internet.defer import CancelledError, Deferred, DeferredList, maybeDeferred
from twisted.mail.imap4 import IAccount
from zope.interface import implementer

from imapreferral.imap.factory import ReferralServerFactory
from imapreferral.imap.proxying import localBackendLogin
from imapreferral.imap.responses import renderOutcome
from imapreferral.interfaces import IPassdb
from imapreferral.login.attempt import LoginAttempts
from imapreferral.login.checker import PassdbChecker, normaliseUsername
from imapreferral.login.context import LoginContext
from imapreferral.login.credentials import PasswordCredentials
from imapreferral.login.fields import _PROXY_FIELDS, PassdbReply, ProxyFields, _redactedPassword
from imapreferral.login.outcome import (
    Disable,
    LoggedIn,
    Outcome,
    ProxyDestination,
    ProxyLogin,
    Refer,
    Reject,
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

    def lines(self) -> list[str]:
        if self.error is not None:
            return [f"passdb {self.passdb}: unavailable: {self.error}"]
        if self.reply is None:
            return [f"passdb {self.passdb}: user unknown"]
        fields = formatFields(replyFields(self.reply)) or "(no fields)"
        return [f"passdb {self.passdb}: found", f"  {fields}"]


@implementer(IPassdb)
class _Traced:
    """A passdb that notes every answer it gives in C{answers}."""

    def __init__(self, passdb: Any, answers: list[PassdbAnswer]) -> None:
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


class ServerParts:
    """
    The server C{makeService} builds from C{config}, its listeners left
    out: the passdbs (SQL pools), the password verifier and the factory
    with its portal and policy.
    """

    def __init__(self, config: Any, makeService: Any) -> None:
        config["workers"] = 1  # no worker processes: nothing listens
        config["adopt-listeners"] = 0
        service = makeService(config)
        self.factory: ReferralServerFactory = service.factory
        self.passdbs: Sequence[Any] = config["passdb"]
        self.lowercase = not config["keep-username-case"]
        self._parts = [s for s in service if not isinstance(s, StreamServerEndpointService)]
        self.answers: list[PassdbAnswer] = []
        checker = self.factory.portal.checkers.get(IUsernamePassword)
        if isinstance(checker, PassdbChecker):
            checker.passdbs = tuple(_Traced(p, self.answers) for p in checker.passdbs)

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


def loginContext(remoteIP: str | None, localIP: str | None, localPort: int | None) -> LoginContext:
    """
    Where the tested login comes from: what SQL's C{%r}, C{%l} and
    C{proxy_maybe} see. Addresses are normalised as a socket gives them.
    """

    def normal(address: str | None) -> str | None:
        return None if address is None else str(ipaddress.ip_address(address))

    return LoginContext(remoteIP=normal(remoteIP), localIP=normal(localIP), localPort=localPort)


@attrs.frozen
class TestedLogin:
    """
    A tested login: what each passdb said, which one decided, the outcome
    and the tagged reply.
    """

    answers: tuple[PassdbAnswer, ...]
    outcome: Outcome
    reply: bytes
    greetingReferral: str | None = None

    @property
    def decidedBy(self) -> str | None:
        """
        The passdb whose reply decided: the checker stops at the first
        that logs in, refers, proxies or disables, so the last one asked
        when the outcome is one of those.
        """
        if isinstance(self.outcome, Reject | Unavailable) or not self.answers:
            return None
        last = self.answers[-1]
        return last.passdb if last.reply is not None else None

    @property
    def status(self) -> int:
        if isinstance(self.outcome, Unavailable):
            return TEMPFAIL
        if isinstance(self.outcome, Reject | Disable):
            return FAILURE
        return SUCCESS

    def lines(self) -> list[str]:
        lines = [line for answer in self.answers for line in answer.lines()]
        if not self.answers:
            lines.append("no passdb was asked")
        lines.append(f"decided by: {self.decidedBy or 'no passdb'}")
        lines.append(f"outcome: {_describe(self.outcome)}")
        if isinstance(self.outcome, ProxyLogin):
            lines.extend(_destination(self.outcome.destination))
            lines.append("reply: the backend's answer to our login (not contacted here)")
            if self.outcome.referral is not None:
                lines.append(
                    f"  (an OK from it is sent as: {self.reply.decode('utf-8', 'replace')})"
                )
        else:
            lines.append(f"reply: {self.reply.decode('utf-8', 'replace')}")
        if self.greetingReferral is not None:
            lines.append(
                f"but: --greeting-referral sends every client to {self.greetingReferral} "
                "(* BYE [REFERRAL ...]) before it can log in"
            )
        return lines


def _describe(outcome: Outcome) -> str:
    if isinstance(outcome, LoggedIn):
        return "logged in here" + (", referral suggested" if outcome.referral else "")
    if isinstance(outcome, Refer):
        return f"referred to {outcome.referral.host}"
    if isinstance(outcome, ProxyLogin):
        return f"proxied to {outcome.destination.address}"
    if isinstance(outcome, Disable):
        return "login disabled"
    if isinstance(outcome, Unavailable):
        return f"temporary failure: {outcome.why}"
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
    """
    attempts = LoginAttempts(parts.factory.portal, IAccount, reactor, failureDelay=0)
    credentials = PasswordCredentials(user, password, context)
    outcome = await attempts.attempt(credentials, user.decode("utf-8", "replace"))
    local = parts.factory.policy.localBackend
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
    return TestedLogin(tuple(parts.answers), outcome, reply, parts.factory.policy.greetingReferral)


@attrs.frozen
class LookupResult:
    """C{auth lookup}: each passdb's answer for one user name."""

    user: str
    answers: tuple[PassdbAnswer, ...]

    @property
    def status(self) -> int:
        if any(answer.reply is not None for answer in self.answers):
            return SUCCESS
        if any(answer.error is not None for answer in self.answers):
            return TEMPFAIL
        return FAILURE

    def lines(self) -> list[str]:
        return [f"user: {self.user}"] + [
            line for answer in self.answers for line in answer.lines()
        ]


async def lookupUser(parts: ServerParts, user: bytes, context: LoginContext) -> LookupResult:
    """Ask every passdb about C{user} (normalised as for a login), no password checked."""
    name = normaliseUsername(user, parts.lowercase)
    answers = []
    for passdb in parts.passdbs:
        try:
            reply = await passdb.lookup(name, context)
        except Exception as e:
            answers.append(PassdbAnswer(repr(passdb), error=str(e)))
        else:
            answers.append(PassdbAnswer(repr(passdb), reply))
    return LookupResult(name, tuple(answers))
