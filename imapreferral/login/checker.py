"""
L{PassdbChecker}: a C{twisted.cred} checker over Dovecot-style passdbs.

It fetches each passdb's reply, checks the password (cred style: the
credentials check themselves, so CRAM-MD5 works with any plaintext store),
asks L{decide} and turns the decision into an avatar id or an error.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Awaitable, Callable, Collection, Sequence

import attrs
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.logger import Logger
from zope.interface import implementer

from imapreferral.interfaces import IPassdb, IPasswordVerifier, IVerifyingPassdb
from imapreferral.login.client import PROXY, REFER, REFERRAL_MODES, referOrProxy
from imapreferral.login.context import LoginContext
from imapreferral.login.credentials import CramMD5Credentials
from imapreferral.login.decision import decide
from imapreferral.login.decoy import Decoys
from imapreferral.login.destination import DEFAULT_PROXY_TIMEOUT, proxyDestination
from imapreferral.login.errors import (
    AuthenticationFailed,
    LoginDisabled,
    LoginProxied,
    LoginReferral,
    TemporaryFailure,
)
from imapreferral.login.fields import PassdbReply
from imapreferral.login.immediate import Soon, runNow
from imapreferral.login.logline import USER_LIMIT, remoteText
from imapreferral.login.outcome import (
    Accept,
    AvatarId,
    Decision,
    Disable,
    Proxy,
    Refer,
    Referral,
    Reject,
    Unavailable,
)
from imapreferral.logtext import quote, sessionSystem
from imapreferral.passwords import SchemeVerifier

_log = Logger()


#: Dovecot's %L lower-cases ASCII only (t_str_lcase): JÖRG becomes jÖrg.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def normaliseUsername(raw: bytes, lowercase: bool = True) -> str:
    """
    The name passdbs are asked about: UTF-8 (undecodable bytes kept as
    surrogates), stripped, ASCII letters lower-cased like Dovecot's default
    C{auth_username_format = %Lu} unless C{lowercase} is false.
    """
    name = raw.decode("utf-8", "surrogateescape").strip()
    return name.translate(_ASCII_LOWER) if lowercase else name


class _Unverifiable(Exception):
    """A stored password that cannot be checked, on its way past the passdb's outage handling."""

    def __init__(self, error: TemporaryFailure) -> None:
        super().__init__(str(error))
        self.error = error


@implementer(ICredentialsChecker)
class PassdbChecker:
    """
    Consults passdbs in order, like Dovecot's C{passdb} blocks with their
    defaults: an unknown user or a wrong password goes on to the next passdb;
    the first that accepts the password (or says C{nopassword}) decides. A
    user no passdb knows has their password checked against a decoy
    (L{Decoys}), so that they cost the hashing a known user does.

    The avatar id is an L{AvatarId} (with the referral for the
    log-in-anyway case); C{nologin} fails with L{LoginReferral} or
    L{LoginDisabled}; C{proxy} with L{LoginProxied}; a wrong password with L{AuthenticationFailed}; a
    broken passdb with L{TemporaryFailure}. Cancelling the Deferred (the
    client went away) cancels the pending lookup or verification and fails
    with C{CancelledError}: no further passdb is asked.

    @ivar passdbs: The L{IPassdb}s, in order.
    @ivar verifier: Checks stored passwords; see L{IPasswordVerifier}.
    @ivar lowercaseUsernames: See L{normaliseUsername}.
    @ivar selfAddresses: C{(ip, port)} pairs that are this server besides
        the address the client connected to (C{--proxy-self}), for
        C{proxy_maybe}. Held, not copied: it may be filled once listening.
    @ivar resolveHost: Looks up a host name without blocking,
        C{(host, port, timeout)} to its addresses (the proxy connector's
        L{imapreferral.proxy.connect.BackendConnector.resolveHost}), so a
        C{proxy_maybe} host given as a name can be found to be this server;
        L{None}: names are never this server (the connector then refuses
        to proxy to itself).
    @ivar referralMode: What a C{host} + C{nologin} reply comes to:
        C{refer} (the referral, for everyone), C{proxy} (the session is
        proxied to that host instead) or C{auto} (referred if the client
        follows referrals, else proxied); see
        L{imapreferral.login.client.referOrProxy}.
    @ivar lookupTimed: Told C{(passdb, seconds)} after each passdb lookup
        that answered (found, not found or failed; not one the client
        cancelled), e.g. by metrics; L{None}: nobody asks. The seconds do
        not include the password check, even where the passdb runs it (the
        auth cache).
    @ivar timer: Seconds from a fixed point, to time lookups with.
    """

    credentialInterfaces = (IUsernamePassword, IUsernameHashedPassword)

    def __init__(
        self,
        passdbs: Sequence[IPassdb],
        verifier: IPasswordVerifier | None = None,
        lowercaseUsernames: bool = True,
        selfAddresses: Collection[tuple[str, int]] = (),
        resolveHost: Callable[[str, int, float], Awaitable[Sequence[str]]] | None = None,
        referralMode: str = REFER,
        lookupTimed: Callable[[IPassdb, float], None] | None = None,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        if not passdbs:
            raise ValueError("PassdbChecker needs at least one passdb")
        if referralMode not in REFERRAL_MODES:
            raise ValueError(f"referralMode must be one of {REFERRAL_MODES}")
        self.referralMode = referralMode
        self.passdbs = tuple(passdbs)
        self.verifier = verifier if verifier is not None else SchemeVerifier()
        self.lowercaseUsernames = lowercaseUsernames
        self.selfAddresses = selfAddresses
        self.resolveHost = resolveHost
        self.lookupTimed = lookupTimed
        self.timer = timer
        self._decoys = Decoys(self.verifier)

    def canProvidePlaintext(self) -> bool:
        """Whether CRAM-MD5 can ever work: a passdb may hold plaintext or {CRAM-MD5}."""
        return any(passdb.canProvidePlaintext() for passdb in self.passdbs)

    def requestAvatarId(self, credentials: object) -> Deferred[AvatarId]:
        return maybeDeferred(self.requestAvatarIdNow, credentials)

    def requestAvatarIdNow(self, credentials: object) -> Soon:
        """
        L{requestAvatarId}, but the avatar id itself (or the refusal, raised)
        when no passdb or hash had to be waited for; see
        L{imapreferral.login.immediate}.
        """
        return runNow(self._check(credentials))

    async def _check(self, credentials: object) -> AvatarId:
        username = normaliseUsername(credentials.username, self.lowercaseUsernames)  # type: ignore[attr-defined]
        context = getattr(credentials, "context", None) or LoginContext()
        decision: Decision = Reject()
        tempfail: str | None = None
        checked = False
        for passdb in self.passdbs:
            try:
                reply, passwordOk = await self._consult(passdb, username, context, credentials)
            except CancelledError:
                raise  # the client went away: no outcome, no next passdb
            except _Unverifiable as e:
                raise e.error from None
            except Exception as e:
                # The passdb logs its own outages once; the login line says the rest.
                tempfail = f"passdb {passdb!r} failed: {e}"
                continue
            if reply is None:
                continue
            if reply.password is not None:
                self._decoys.saw(reply.password)
                checked = checked or not reply.nopassword
            if reply.proxyMaybe and await self._proxyPointsHere(reply, context):
                # Log in here; as Dovecot, the proxy fields go (no referral to self).
                reply = attrs.evolve(reply, proxyMaybe=False, host=None, port=None, destuser=None)
            elif _refers(reply, passwordOk) and await self._pointsHere(
                (reply.host or "").strip(), reply.port or 143, DEFAULT_PROXY_TIMEOUT, context
            ):
                _warnLoop(passdb, reply, username, context)
                # nopassword left the check to the target, which is us: no login unchecked.
                reply = attrs.evolve(
                    reply, host=None, port=None, destuser=None, nologin=False, nopassword=False
                )
            decision = decide(reply, passwordOk, username)
            if isinstance(decision, Proxy):
                return self._proxy(decision.user, reply, credentials, verified=passwordOk)
            if isinstance(decision, Refer) and self._proxiesInstead(context):
                self._proxy(
                    decision.referral.user,
                    reply,
                    credentials,
                    verified=decision.verified,
                    insteadOf=decision.referral,
                )
            if not isinstance(decision, Reject):
                break
        if isinstance(decision, Reject) and tempfail is not None:
            decision = Unavailable(tempfail)
        elif isinstance(decision, Reject) and not checked:
            if IUsernamePassword.providedBy(credentials):
                await self._decoys.check(credentials.password)  # type: ignore[attr-defined]
        return self._conclude(decision)

    async def _consult(
        self, passdb: IPassdb, username: str, context: LoginContext, credentials: object
    ) -> tuple[PassdbReply | None, bool]:
        """
        A passdb's reply and whether the password matches it. A passdb that
        wants the password check itself (the auth cache) gets it; a check
        that cannot be done comes out as L{_Unverifiable}, not as an outage
        of that passdb.
        """

        checking = [0.0]  # seconds in verify, not the passdb's (lookupTimed)

        async def verify(reply: PassdbReply) -> bool:
            began = self.timer()
            try:
                return await self._passwordMatches(reply, credentials)
            except TemporaryFailure as e:
                raise _Unverifiable(e) from e
            finally:
                checking[0] += self.timer() - began

        started = self.timer()
        answer: tuple[PassdbReply | None, bool] | None = None
        try:
            if IVerifyingPassdb.providedBy(passdb):
                answer = await passdb.lookupVerified(username, context, verify)  # type: ignore[attr-defined]
            else:
                reply = await passdb.lookup(username, context)
        except CancelledError:
            raise
        except Exception:
            self._timed(passdb, started, checking[0])
            raise
        self._timed(passdb, started, checking[0])
        if answer is not None:
            return answer
        if reply is None:
            return None, False
        return reply, await verify(reply)

    def _timed(self, passdb: IPassdb, started: float, checking: float) -> None:
        if self.lookupTimed is not None:
            self.lookupTimed(passdb, self.timer() - started - checking)

    async def _passwordMatches(self, reply: PassdbReply, credentials: object) -> bool:
        if reply.nopassword or reply.password is None:
            return False
        try:
            if IUsernamePassword.providedBy(credentials):
                return bool(await self.verifier.verify(reply.password, credentials.password))  # type: ignore[attr-defined]
            if isinstance(credentials, CramMD5Credentials):
                # Works with plaintext and with Dovecot's {CRAM-MD5} stored form.
                return self.verifier.verifyCramMD5(
                    reply.password, credentials.challenge, credentials.response
                )
            plaintext = self.verifier.plaintext(reply.password)
            return plaintext is not None and bool(credentials.checkPassword(plaintext))  # type: ignore[attr-defined]
        except CancelledError:
            raise
        except Exception as e:
            raise TemporaryFailure(f"cannot verify the stored password: {e}") from e

    def _proxiesInstead(self, context: LoginContext) -> bool:
        """Whether this client's referral is proxied instead (L{referralMode})."""
        return referOrProxy(self.referralMode, context.client) == PROXY

    async def _proxyPointsHere(self, reply: PassdbReply, context: LoginContext) -> bool:
        """
        C{proxy_maybe}: whether C{hostip} (else C{host}) and C{port} (143,
        or 993 with C{ssl}) are this server (L{_pointsHere}); a name is
        resolved within C{proxy_timeout}.
        """
        fields = reply.proxyFields
        host = (fields.hostip or reply.host or "").strip()
        tls = fields.ssl and not fields.starttls
        port = reply.port or (993 if tls else 143)
        timeout = fields.timeout if fields.timeout is not None else DEFAULT_PROXY_TIMEOUT
        return await self._pointsHere(host, port, timeout, context)

    async def _pointsHere(
        self, host: str, port: int, timeout: float, context: LoginContext
    ) -> bool:
        """
        Whether C{host} and C{port} are the address the client connected
        to, as Dovecot compares them for C{proxy_maybe}, or one of
        L{selfAddresses}: for C{proxy_maybe} (then log in here) and for a
        referral (a loop: never sent). A host name is resolved
        (L{resolveHost}, bounded by C{timeout}) and any of its addresses
        counts, as in Dovecot's auth process; if it cannot be resolved it
        is not here, and the connector says why. Only a port of ours can
        make a loop, so for other ports no name is looked up (a referral
        login costs no DNS query).
        """
        host = host.strip("[]")
        if port != context.localPort and all(port != p for _, p in self.selfAddresses):
            return False
        try:
            addresses: Sequence[str] = [_canonical(host)]
        except ValueError:
            if self.resolveHost is None or not host:
                return False
            addresses = await self.resolveHost(host, port, timeout)
        return any(self._isSelf(_canonical(ip), port, context) for ip in addresses)

    def _isSelf(self, ip: str, port: int, context: LoginContext) -> bool:
        if context.localIP is not None and (ip, port) == (
            _canonical(context.localIP),
            context.localPort,
        ):
            return True
        return any((ip, port) == (_canonical(a), p) for a, p in self.selfAddresses)

    @staticmethod
    def _proxy(
        user: str,
        reply: PassdbReply,
        credentials: object,
        verified: bool,
        insteadOf: Referral | None = None,
    ) -> None:
        """
        C{proxy}: fail with L{LoginProxied} holding the backend destination
        for C{user}, whose password is C{pass} or else the one the client
        sent. A login that cannot be proxied (CRAM-MD5 sent no password and
        there is no C{pass}) is a temporary failure saying why, also when it
        is proxied C{insteadOf} a referral: in C{proxy} mode nobody is
        referred (the target may be an internal host), and c-client goes on
        to its next mechanism (PLAIN) after a C{NO}.
        """
        password = None
        if IUsernamePassword.providedBy(credentials):
            password = credentials.password.decode("utf-8", "surrogateescape")  # type: ignore[attr-defined]
        destination = proxyDestination(reply, user, password)
        if isinstance(destination, Unavailable):
            raise TemporaryFailure(destination.why)
        raise LoginProxied(
            destination, verified=verified and not reply.nopassword, insteadOf=insteadOf
        )

    def _conclude(self, decision: Decision) -> AvatarId:
        if isinstance(decision, Accept):
            return AvatarId(username=decision.user, referral=decision.referral)
        if isinstance(decision, Refer):
            raise LoginReferral(decision.referral, verified=decision.verified)
        if isinstance(decision, Disable):
            raise LoginDisabled(decision.reason)
        if isinstance(decision, Reject):
            raise AuthenticationFailed(nodelay=decision.nodelay)
        raise TemporaryFailure(decision.why)


def _canonical(ip: str) -> str:
    """
    An address in one spelling: an IPv4-mapped IPv6 address (a dual-stack
    listener's view of an IPv4 client, C{::ffff:192.0.2.1}) as IPv4.

    @raise ValueError: C{ip} is not an address.
    """
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


def _refers(reply: PassdbReply, passwordOk: bool) -> bool:
    """Whether C{reply} refers (C{host}, no proxying) once the password is right."""
    host = (reply.host or "").strip()
    if reply.proxy or reply.proxyMaybe:
        return False
    return bool(host) and (passwordOk or reply.nopassword)


def _warnLoop(passdb: IPassdb, reply: PassdbReply, username: str, context: LoginContext) -> None:
    """
    A referral to this server would send the client back here (Alpine
    follows such a loop hop after hop, a password prompt each time): say
    which passdb entry does it; the user logs in here instead, if the
    password was checked (a C{nopassword} referral leaves that to the
    target, which is us: then the login fails).
    """
    port = reply.port or 143
    summary = (
        f"referral loop remote={remoteText(context)}: passdb {passdb!r} refers to this "
        f"server (host={quote(reply.host or '')} port={port}), logging in here instead "
        f"user={quote(username, USER_LIMIT)}"
    )
    session = getattr(context, "session", None)
    _log.warn(
        "{summary}",
        summary=summary,
        passdb=repr(passdb),
        user=username,
        port=port,
        event="referral loop",
        session=session,
        remote=remoteText(context),
        log_system=sessionSystem(_log.namespace, "warn", session),
    )
