"""
Connecting to a proxy backend and logging in there: the I/O around the
sans-IO dialogue of L{imapreferral.imap.backend}.

What Dovecot's login proxy does (C{login-proxy.c}), with its defaults:
  - C{host} resolved without blocking the reactor (C{hostip} skips it);
    the addresses are tried in order.
  - Implicit TLS (C{ssl=yes}) or STARTTLS, the certificate checked against
    C{host} with the system trust store or a CA file; C{any-cert} skips it.
  - C{proxy_timeout} covers everything, all attempts included, from the
    first connect to the tagged login reply.
  - Retryable failures (connect, banner, backend gone, C{NO [UNAVAILABLE]})
    are retried up to C{maxReconnects} times, C{retryDelay} apart, while
    more than C{retryDelay} + 0.1 s of the timeout is left.
  - A backend's C{NO [REFERRAL imap://...]} is followed by the front, one
    hop, with the same credentials (the URL's user if it names one); a
    referral to ourselves or back to where we were is a loop.
  - A TTL that reached 1 refuses to proxy ("proxies appear to be
    looping"), as does a destination that is one of our own listeners.

Every failure is a value from L{imapreferral.imap.backendresult} whose
C{state} is C{connect}, C{banner}, C{starttls} or C{login} and whose
C{cause} names the backend and the attempt, for a one-line log.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection

import attrs
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import UserError
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IReactorTime,
    IResolutionReceiver,
    ITransport,
)
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.internet.task import deferLater
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from imapreferral.imap.backend import (
    BackendDialogue,
    BackendLogin,
    ForwardedClient,
    Send,
    StartTLS,
)
from imapreferral.imap.backendresult import (
    CONNECT,
    LOGIN,
    STARTTLS_STATE,
    BackendFailure,
    BackendLoggedIn,
    BackendMisconfigured,
    BackendReferral,
    BackendResult,
    BackendUnavailable,
)
from imapreferral.imap.url import parseServerURL
from imapreferral.login.outcome import IMPLICIT_TLS, PLAIN, ProxyDestination

#: Dovecot's C{login_proxy_max_reconnects}.
MAX_RECONNECTS = 3
#: Seconds between attempts (Dovecot: one second).
RETRY_DELAY = 1.0


def loadTrustRoot(caFile: str | None):
    """
    The certificates backends must chain to: every PEM certificate in
    C{caFile}, or the system trust store when L{None}.

    @raise ValueError: when the file holds no certificate.
    """
    if caFile is None:
        return platformTrust()
    with open(caFile, "rb") as f:
        data = f.read()
    marker = b"-----BEGIN CERTIFICATE-----"
    blocks = [marker + block for block in data.split(marker)[1:]]
    if not blocks:
        raise ValueError(f"{caFile}: no PEM certificate in the file")
    return trustRootFromCertificates([Certificate.loadPEM(block) for block in blocks])


@attrs.frozen
class BackendSession:
    """
    A backend connection, logged in and not read from until the relay
    takes it (L{attach}).

    @ivar destination: Where it went (after a referral, the referred host).
    @ivar result: The login result: what to tell the client.
    @ivar attempts: Connections made, retries and referral included.
    """

    destination: ProxyDestination
    result: BackendLoggedIn
    attempts: int
    protocol: BackendProtocol

    @property
    def transport(self) -> ITransport:
        return self.protocol.transport

    def attach(self, end) -> bytes:
        """
        From now on the connection's events go to C{end} (a relay end);
        returns what the backend sent after its tagged OK, for the client.
        """
        return self.protocol.attach(end)


@implementer(IHandshakeListener)
class BackendProtocol(Protocol):
    """
    Drives one L{BackendDialogue} over a connection; once logged in, holds
    the connection paused and then forwards its events to a relay end.
    """

    def __init__(
        self, dialogue: BackendDialogue, tlsCreator: object | None, implicitTLS: bool = False
    ) -> None:
        self._dialogue: BackendDialogue | None = dialogue
        self._state = dialogue.state
        self.result: Deferred[BackendResult] = Deferred()
        self.closed: Deferred[None] = Deferred()
        self._tlsCreator = tlsCreator
        self._implicitTLS = implicitTLS
        self._tlsPending = implicitTLS
        self._lost = False
        self._end = None
        self._pending = bytearray()

    @property
    def state(self) -> str:
        """The dialogue's state; C{connect} until an implicit TLS handshake is done."""
        if self._implicitTLS and self._tlsPending:
            return CONNECT
        return self._dialogue.state if self._dialogue is not None else self._state

    def dataReceived(self, data: bytes) -> None:
        if self._end is not None:
            self._end.dataReceived(data)
        elif self._dialogue is None:  # decrypted after we paused: the relay's
            self._pending += data
        else:
            self._act(self._dialogue.receive(data))

    def _act(self, actions: list) -> None:
        for action in actions:
            if isinstance(action, Send):
                self.transport.write(action.data)
            elif isinstance(action, StartTLS):
                self._tlsPending = True
                self.transport.startTLS(self._tlsCreator)
                self._act(self._dialogue.tlsStarted())
            else:
                self._state, self._dialogue = self._dialogue.state, None  # memory, password
                if isinstance(action, BackendLoggedIn):
                    self.transport.pauseProducing()
                    self._pending[:0] = action.leftover
                elif not self._lost:
                    self.transport.abortConnection()
                if not self.result.called:
                    self.result.callback(action)

    def handshakeCompleted(self) -> None:
        self._tlsPending = False

    def connectionLost(self, reason: Failure) -> None:
        self._lost = True
        if self._end is not None:
            self._end.connectionLost(reason)
        elif not self.result.called:
            if self._tlsPending and reason.check(SSL.Error, VerificationError):
                # A certificate or TLS set-up problem: retrying cannot help.
                state = CONNECT if self._implicitTLS else STARTTLS_STATE
                cause = f"TLS handshake with the backend failed: {reason.getErrorMessage()}"
                self.result.callback(BackendMisconfigured(state, cause))
            else:
                self._act(self._dialogue.connectionLost(reason.getErrorMessage()))
        self.closed.callback(None)

    def attach(self, end) -> bytes:
        self._end = end
        leftover, self._pending = bytes(self._pending), bytearray()
        return leftover


class _Attempt(ClientFactory):
    """
    One connection to one address, until a result or the deadline. A
    plain C{connectTCP} factory, not an endpoint: an endpoint's wrapping
    protocol and factory would stay alive with every proxied session.
    """

    noisy = False

    def __init__(self, protocol: BackendProtocol) -> None:
        self.done: Deferred[BackendResult] = Deferred()
        self.protocol = protocol
        self.connector = None
        self._connected = False
        protocol.result.addCallback(self._finish)

    def buildProtocol(self, addr) -> BackendProtocol:
        self._connected = True
        return self.protocol

    def clientConnectionFailed(self, connector, reason: Failure) -> None:
        if not reason.check(UserError):  # our stopConnecting() at the deadline
            cause = f"connect failed: {reason.getErrorMessage()}"
            self._finish(BackendUnavailable(CONNECT, cause))

    def _finish(self, result: BackendResult) -> None:
        if not self.done.called:
            self.done.callback(result)

    def timeout(self, seconds: float) -> None:
        """The deadline passed: fail in the state we are in, and cut."""
        state = self.protocol.state if self._connected else CONNECT
        self._finish(BackendUnavailable(state, f"timed out after {seconds:g}s"))
        self.abort()

    def abort(self) -> None:
        """Cut the connection, or stop making it."""
        if not self._connected:
            self.connector.stopConnecting()
        elif self.protocol.transport is not None:
            self.protocol.transport.abortConnection()

    async def closed(self) -> None:
        """Wait until a failed attempt's connection is gone (no leaks)."""
        if self._connected:
            await self.protocol.closed


@implementer(IResolutionReceiver)
class _Addresses:
    """Collects what the reactor's name resolver finds, in its order."""

    def __init__(self) -> None:
        self.found: list[str] = []
        self.done: Deferred[list[str]] = Deferred()

    def resolutionBegan(self, resolution) -> None:
        pass

    def addressResolved(self, address) -> None:
        self.found.append(address.host)

    def resolutionComplete(self) -> None:
        if not self.done.called:
            self.done.callback(self.found)


def _isAddress(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class BackendConnector:
    """
    Connects to proxy backends and logs in there. One per front: holds
    the reactor, the clock, the trust root and the retry policy.

    @param selfAddresses: C{(ip, port)} pairs of our own listeners, so a
        destination or referral pointing back at us is refused.
    """

    def __init__(
        self,
        reactor,
        clock: IReactorTime | None = None,
        trustRoot=None,
        maxReconnects: int = MAX_RECONNECTS,
        retryDelay: float = RETRY_DELAY,
        selfAddresses: Collection[tuple[str, int]] = (),
    ) -> None:
        self._reactor = reactor
        self._clock = clock or reactor
        self._trustRoot = trustRoot if trustRoot is not None else platformTrust()
        self._maxReconnects = maxReconnects
        self._retryDelay = retryDelay
        self._self = {(str(ipaddress.ip_address(ip)), port) for ip, port in selfAddresses}

    def _isSelf(self, address: str, port: int) -> bool:
        """Whether C{address}:C{port} is one of our own listeners: proxying there loops."""
        return (address, port) in self._self

    async def loopsToItself(self, destination: ProxyDestination) -> bool:
        """
        Whether C{destination} is (an address of) one of our own listeners,
        which L{connect} refuses ("proxying loops to itself") before
        connecting. Found without connecting (a host name is resolved),
        for C{imapreferral auth test}.
        """
        addresses = await self._resolve(destination, self._clock.seconds() + destination.timeout)
        if isinstance(addresses, BackendUnavailable):
            return False
        return any(self._isSelf(address, destination.port) for address in addresses)

    async def connect(
        self, destination: ProxyDestination, client: ForwardedClient
    ) -> BackendSession | BackendFailure:
        """
        Log in to C{destination} on behalf of C{client}, following one
        referral; a session ready for the relay, or why not. Cancelling
        (the client went away) cuts the backend connection at once and
        stops retrying.
        """
        deadline = self._clock.seconds() + destination.timeout
        visited: set[tuple[str, int]] = set()  # earlier hops' addresses
        attempts = 0
        for hop in range(2):
            if client.ttl <= 1:
                return BackendMisconfigured(
                    CONNECT, "TTL reached zero - proxies appear to be looping?"
                )
            here: set[tuple[str, int]] = set()
            outcome, tried = await self._tryAll(destination, client, deadline, visited, here)
            attempts += tried
            visited |= here
            if not isinstance(outcome, BackendReferral):
                return self._withAttempts(outcome, destination, attempts)
            if hop:
                return self._withAttempts(
                    BackendMisconfigured(LOGIN, f"referral from a referral ({outcome.url})"),
                    destination,
                    attempts,
                )
            try:
                url = parseServerURL(outcome.url)
            except ValueError as e:
                return BackendUnavailable(LOGIN, f"bad referral from {destination.address}: {e}")
            destination = attrs.evolve(
                destination,
                host=url.host,
                hostip=None,
                port=url.port or (993 if destination.tls == IMPLICIT_TLS else 143),
                user=url.user or destination.user,
            )
            client = attrs.evolve(client, ttl=client.ttl - 1)
        raise AssertionError("unreachable")

    def _withAttempts(self, outcome, destination: ProxyDestination, attempts: int):
        if isinstance(outcome, BackendSession):
            return attrs.evolve(outcome, attempts=attempts)
        tries = f", {attempts} attempts" if attempts > 1 else ""
        return attrs.evolve(outcome, cause=f"{outcome.cause} ({destination.address}{tries})")

    async def _tryAll(self, destination, client, deadline, visited, here):
        """Attempts at one destination with retries: (outcome, attempts)."""
        attempts = 0
        while True:
            outcome = await self._once(destination, client, deadline, visited, here)
            attempts += 1
            if isinstance(outcome, BackendSession | BackendReferral) or not outcome.retryable:
                return outcome, attempts
            left = deadline - self._clock.seconds()
            if attempts > self._maxReconnects or left <= self._retryDelay + 0.1:
                return outcome, attempts
            await deferLater(self._clock, self._retryDelay, lambda: None)

    async def _once(self, destination, client, deadline, visited, here):
        """
        One attempt: resolve, connect to each address in turn, log in;
        C{here} collects the addresses tried, C{visited} holds earlier hops'.
        """
        timedOut = BackendUnavailable(CONNECT, f"timed out after {destination.timeout:g}s")
        addresses = await self._resolve(destination, deadline)
        if isinstance(addresses, BackendUnavailable):
            return addresses
        outcome: BackendResult = timedOut
        for address in addresses:
            target = (address, destination.port)
            if self._isSelf(*target):
                return BackendMisconfigured(CONNECT, "proxying loops to itself")
            if target in visited:
                return BackendMisconfigured(CONNECT, f"referral loops back to {address}")
            left = deadline - self._clock.seconds()
            if left <= 0:
                return timedOut
            here.add(target)
            attempt = self._start(destination, client, address)
            timer = self._clock.callLater(left, attempt.timeout, destination.timeout)
            try:
                outcome = await attempt.done
            except CancelledError:  # the client went away: so does this backend
                attempt.abort()
                raise
            finally:
                if timer.active():
                    timer.cancel()
            if isinstance(outcome, BackendLoggedIn):
                return BackendSession(destination, outcome, 1, attempt.protocol)
            await attempt.closed()
            if outcome.state != CONNECT or "timed out" in outcome.cause:
                break
        return outcome

    async def _resolve(self, destination, deadline) -> list[str] | BackendUnavailable:
        """C{hostip}, C{host} if it is an address, else a non-blocking lookup."""
        if destination.hostip is not None:
            return [destination.hostip]
        if _isAddress(destination.host):
            return [str(ipaddress.ip_address(destination.host))]
        left = deadline - self._clock.seconds()
        found = await self.resolveHost(destination.host, destination.port, left)
        if not found:
            return BackendUnavailable(CONNECT, f"cannot resolve {destination.host}")
        return found

    async def resolveHost(self, host: str, port: int, timeout: float) -> list[str]:
        """
        The addresses of the name C{host}, in the resolver's order without
        repeats, looked up through the reactor's resolver (a thread, never
        blocking the reactor); what was found by then if C{timeout} seconds
        pass, and nothing if it cannot be resolved. Also what the passdb
        checker uses to see whether a C{proxy_maybe} host is this server.
        """
        receiver = _Addresses()
        self._reactor.nameResolver.resolveHostName(
            receiver, host, portNumber=port,
            addressTypes=[IPv4Address, IPv6Address], transportSemantics="TCP",
        )  # fmt: skip
        timer: IDelayedCall = self._clock.callLater(max(0.0, timeout), receiver.resolutionComplete)
        try:
            found = await receiver.done
        finally:  # also when cancelled: the client went away
            if timer.active():
                timer.cancel()
        return list(dict.fromkeys(found))

    def _start(self, destination: ProxyDestination, client: ForwardedClient, address: str):
        login = BackendLogin.forDestination(destination, client)
        creator = None if destination.tls == PLAIN else self._tlsCreator(destination)
        protocol = BackendProtocol(
            BackendDialogue(login), creator, destination.tls == IMPLICIT_TLS
        )
        attempt = _Attempt(protocol)
        factory = attempt
        if destination.tls == IMPLICIT_TLS:
            factory = TLSMemoryBIOFactory(creator, True, attempt)
        bind = (destination.sourceIP, 0) if destination.sourceIP else None
        attempt.connector = self._reactor.connectTCP(
            address, destination.port, factory, timeout=destination.timeout + 1, bindAddress=bind
        )
        return attempt

    def _tlsCreator(self, destination: ProxyDestination):
        """TLS towards the backend: verified against C{host}, or any-cert."""
        if not destination.verifyCertificate:
            return CertificateOptions()
        return optionsForClientTLS(destination.host, trustRoot=self._trustRoot)
