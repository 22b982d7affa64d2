"""
The IMAP server's side of a proxy login: after the front authenticated the
client and the passdb said C{proxy}, log in to the backend
(L{imapreferral.proxy.connect}), tell the client how that went with
Dovecot's words, and on success splice the two connections
(L{imapreferral.proxy.relay}).

L{ProxiedLogin} holds one connection's proxy login and then its relay; the
server (L{imapreferral.imap.server.ReferralIMAP4Server}) only starts it and
forwards its connection's events while it lives. Every proxy event is
logged by L{logProxy}, one line each, with its fields as event keys.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from imapreferral.imap.backend import DEFAULT_PROXY_TTL, ForwardedClient
from imapreferral.imap.backendresult import BackendAuthFailed, BackendUnavailable
from imapreferral.imap.responses import renderBackendResult
from imapreferral.login.context import LoginContext, acceptableSessionID
from imapreferral.login.destination import proxyDestination
from imapreferral.login.fields import PassdbReply
from imapreferral.login.logline import WHY_LIMIT, remoteText
from imapreferral.login.outcome import LoggedIn, ProxyLogin, Unavailable
from imapreferral.logtext import quote, sessionSystem
from imapreferral.proxy.connect import BackendConnector, BackendSession
from imapreferral.proxy.relay import Relay, RelayStats

if TYPE_CHECKING:
    from imapreferral.imap.server import ReferralIMAP4Server

_log = Logger()


#: Fields of a proxy line that a client or a backend chose: written last,
#: quoted by L{quote} (the user name may be the login name; a cause may carry
#: the backend's text), so they cannot forge the fields before them.
_CHOSEN = ("user", "destuser", "cause")


def logProxy(event: str, failed: bool = False, **fields: object) -> None:
    """
    The one place proxy log lines are written. C{event} says what happened
    (C{started}, C{failed}, C{authentication failed} (L{failedEvent}),
    C{ended}, C{client gone}); the fields (C{user},
    C{remote}, C{backend}, C{session}, C{state}, C{cause}, byte counts)
    stay separate event keys for structured logs. Text logs get what we
    know first (C{remote=} is always the real client), then the user and
    the cause in quotes no value can close, as every log line does.
    """
    known = " ".join(
        f"{key}={value}"
        for key, value in fields.items()
        if value is not None and key not in _CHOSEN
    )
    chosen = "".join(
        f" {key}={quote(str(fields[key]), WHY_LIMIT)}"
        for key in _CHOSEN
        if fields.get(key) is not None
    )
    emit, level = (_log.warn, "warn") if failed else (_log.info, "info")
    session = fields.get("session")
    # One preformatted field: Twisted's formatter is slow per {key}.
    emit(
        "{summary}",
        summary=f"proxy {event}: {known}{chosen}",
        event=f"proxy {event}",
        log_system=sessionSystem(_log.namespace, level, session),  # type: ignore[arg-type]
        **fields,
    )


def failedEvent(result: object, verified: bool) -> str:
    """
    What a failed proxy login's line says happened. C{authentication
    failed} when the backend refused a password the front did not check
    (C{nopassword}): the client's guess was checked there, and
    C{examples/fail2ban/} counts these lines as it counts the login lines.
    Otherwise C{failed}: a backend that is down, slow, misconfigured or
    refusing a password the front had already accepted is no guess.
    """
    if isinstance(result, BackendAuthFailed) and not verified:
        return "authentication failed"
    return "failed"


class ProxiedLogin:
    """
    One connection's proxy login, then its relay.

    @ivar relay: The relay once the backend accepted the login, else L{None}.
    @ivar finished: Whether the login is over (relaying, or failed and the
        client may go on).
    """

    __slots__ = (
        "_auth", "_connecting", "_lost", "_outcome", "_server", "_tag", "_user", "_waiting",
        "finished", "relay",
    )  # fmt: skip

    def __init__(
        self,
        server: ReferralIMAP4Server,
        tag: bytes,
        outcome: ProxyLogin,
        auth: str,
        user: str | None = None,
    ) -> None:
        """
        @param auth: What a referral URL puts in C{;AUTH=} (the mechanism or
            C{*}), for a C{--local-backend} login that suggests a referral.
        @param user: The name the client logged in with, which every line of
            the session carries (the backend's user, if another, is
            C{destuser}); the destination's user if L{None}.
        """
        self._user = user
        self._server = server
        self._tag = tag
        self._outcome = outcome
        self._auth = auth
        self._waiting: Deferred[object] | None = None
        self._connecting: Deferred[object] | None = None
        self._lost = False
        self.finished = False
        self.relay: Relay | None = None

    def start(self, connector: BackendConnector, client: ForwardedClient) -> None:
        """Log in to the backend; the rest happens as it answers."""
        d = Deferred.fromCoroutine(self._run(connector, client))
        d.addErrback(self._unexpected)

    def _fields(self, **more: object) -> dict[str, object]:
        context = self._server._context("")
        destuser = self._outcome.destination.user
        user = self._user if self._user is not None else destuser
        return {
            "remote": remoteText(context),
            "user": user,
            "destuser": destuser if destuser != user else None,
            "backend": self._outcome.destination.address,
            **more,
        }

    async def _run(self, connector: BackendConnector, client: ForwardedClient) -> None:
        attempts = self._server.attempts
        started = attempts.clock.seconds()
        self._connecting = Deferred.fromCoroutine(
            connector.connect(self._outcome.destination, client)
        )
        try:
            result = await self._connecting
        except CancelledError:
            logProxy("client gone", **self._fields(session=client.sessionID))
            return
        self._connecting = None
        if self._lost:
            if isinstance(result, BackendSession):
                result.transport.abortConnection()
            logProxy("client gone", **self._fields(session=client.sessionID))
            return
        if isinstance(result, BackendSession):
            self._relay(result, client.sessionID, started)
            return
        remote = self._server._context("").remoteIP
        if isinstance(result, BackendAuthFailed):
            if attempts.penalty is not None:
                attempts.penalty.failed(remote)
            remaining = started + attempts.failureDelay - attempts.clock.seconds()
            if remaining > 0:
                self._waiting = deferLater(attempts.clock, remaining, lambda: None)
                try:
                    await self._waiting
                except CancelledError:
                    return
                self._waiting = None
        logProxy(
            failedEvent(result, self._outcome.verified),
            failed=True,
            **self._fields(session=client.sessionID, state=result.state, cause=result.cause),
        )
        self._server.writeRaw(renderBackendResult(self._tag, result))
        self._finish(authFailed=isinstance(result, BackendAuthFailed))

    def _relay(self, session: BackendSession, sessionID: str | None, started: float) -> None:
        """
        Tell the client, and splice. C{started}: when the backend login
        began (the C{started} line's duration; the C{ended} line's is the
        relayed session's).
        """
        server = self._server
        clock = server.attempts.clock
        if not self._outcome.verified and server.attempts.penalty is not None:
            server.attempts.penalty.succeeded(server._context("").remoteIP)
        server.writeRaw(
            renderBackendResult(
                self._tag,
                session.result,
                server.capabilityAsked,
                suggest=self._outcome.referral,
                auth=self._auth,
            )
        )
        pipelined = server.clearLineBuffer()
        self.relay = relay = Relay(server.transport, session.transport, server.attempts.clock)
        self.finished = True
        server.enterRelay()
        fields = self._fields(
            backend=session.destination.address, session=sessionID, attempts=session.attempts
        )
        relaying = clock.seconds()
        logProxy("started", **fields, durationMs=_milliseconds(relaying - started))
        relay.done.addCallback(
            lambda stats: self._ended(stats, fields, clock.seconds() - relaying)
        )
        relays = getattr(getattr(server, "factory", None), "relays", None)
        if relays is not None:  # so that shutdown can close them
            relays.add(relay)
            relay.done.addBoth(lambda result: (relays.discard(relay), result)[1])
        relay.start(toBackend=pipelined, toClient=session.attach(relay.backend))
        server.relayStarted()

    @staticmethod
    def _ended(stats: RelayStats, fields: dict[str, object], duration: float) -> None:
        logProxy(
            "ended",
            **fields,
            endedBy=stats.endedBy,
            toBackend=stats.toBackend,
            toClient=stats.toClient,
            durationMs=_milliseconds(duration),
        )

    def _finish(self, authFailed: bool = False) -> None:
        """The login failed and the client was told: it may go on."""
        self.finished = True
        self._server.proxyFailed(authFailed)

    def _unexpected(self, failure: Failure) -> None:
        _log.failure("proxy login failed unexpectedly", failure)
        if not self._lost and not self.finished:
            unexpected = BackendUnavailable("login", "unexpected error")
            self._server.writeRaw(renderBackendResult(self._tag, unexpected))
            self._finish()

    def dataReceived(self, data: bytes) -> None:
        """The client's bytes, once relaying."""
        assert self.relay is not None
        self.relay.client.dataReceived(data)

    def connectionLost(self, reason: Failure) -> None:
        """
        The client is gone: end the relay, or stop waiting, or cut the
        backend connection being set up (no retries either).
        """
        self._lost = True
        if self.relay is not None:
            self.relay.client.connectionLost(reason)
        elif self._waiting is not None:
            self._waiting.cancel()
        elif self._connecting is not None:
            self._connecting.cancel()

    def close(self) -> None:
        """Shutdown: end the relayed session (both sides flushed, then closed)."""
        if self.relay is not None:
            self.relay.close()


def _milliseconds(seconds: float) -> float:
    return round(seconds * 1000, 3)


def forwardedClient(server: ReferralIMAP4Server, ttl: int = DEFAULT_PROXY_TTL) -> ForwardedClient:
    """What the backend is told about the client (C{ID}), read at login time."""
    context = server._context("")
    return ForwardedClient(
        originatingIP=context.remoteIP,
        originatingPort=context.remotePort,
        connectedIP=context.localIP,
        connectedPort=context.localPort,
        sessionID=context.session,
        ttl=ttl,
        secured=context.secured,
    )


def _address(value: str | None) -> str | None:
    """An address as the log may show it: no zone id (it could hold any text)."""
    if value is None or "%" in value:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def _number(value: str | None, low: int, high: int) -> int | None:
    if value is None or not (value.isascii() and value.isdigit()):
        return None
    if not low <= int(value) <= high:
        return None
    return int(value)


def acceptForwardedID(server: ReferralIMAP4Server, fields: list[tuple[str, str]]) -> None:
    """
    The receiving side of a proxy's C{ID} (Dovecot's C{x-originating-ip},
    C{x-originating-port}, C{x-connected-ip}, C{x-connected-port},
    C{x-proxy-ttl}). The caller only passes the connection's first C{ID},
    before login, from a peer in C{--trusted-networks}: from anyone else
    these would let a client pick its own address. The client's address
    then counts for logs, the penalty and the per-address limit; the TTL
    goes on, one less, to the next backend.
    """
    given = {name.lower(): value for name, value in fields}
    context = server._context("")
    remoteIP = _address(given.get("x-originating-ip"))
    ttl = _number(given.get("x-proxy-ttl"), 0, 1000)
    if ttl is not None:
        server.proxyTTL = ttl
    if remoteIP is None:
        return
    server.clientForwarded(
        LoginContext(
            remoteIP=remoteIP,
            remotePort=_number(given.get("x-originating-port"), 0, 65535),
            localIP=_address(given.get("x-connected-ip")) or context.localIP,
            localPort=_number(given.get("x-connected-port"), 0, 65535) or context.localPort,
            session=acceptableSessionID(given.get("x-session-id")) or context.session,
        )
    )


def localBackendLogin(
    backend: PassdbReply, outcome: LoggedIn, credentials: object
) -> ProxyLogin | Unavailable:
    """
    C{--local-backend}: a login that succeeded here goes on to the old mail
    server behind us, as the same user with the same password (or the
    backend's C{master}/C{pass}), keeping the referral to suggest. The
    realm's account is let go.
    """
    outcome.logout()
    password = getattr(credentials, "password", None)
    clientPassword = None if password is None else password.decode("utf-8", "surrogateescape")
    destination = proxyDestination(backend, outcome.user, clientPassword)
    if isinstance(destination, Unavailable):
        return destination
    return ProxyLogin(destination, referral=outcome.referral)
