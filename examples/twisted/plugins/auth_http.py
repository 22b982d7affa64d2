"""
A checker plugin for imapreferral that asks an HTTP service who may log in
and where, the way nginx's mail proxy asks its C{auth_http} server.

Put this file in a C{twisted/plugins/} directory on C{sys.path} (no
C{__init__.py} there), then::

    twistd -n imapreferral --auth auth-http:http://127.0.0.1:9000/auth

For each login it sends C{GET URL} with the headers nginx sends::

    Auth-Method: plain
    Auth-User: alice            (percent-encoded UTF-8, as nginx does)
    Auth-Pass: secret           (the same)
    Auth-Protocol: imap
    Auth-Login-Attempt: 1
    Client-IP: 192.0.2.7

and reads the answer's headers:

    - C{Auth-Status: OK}: the password is right; anything else is the
      reason it is not (the next C{--passdb}/C{--auth} is then asked).
    - C{Auth-Server: HOST} (and C{Auth-Port: N}): the user lives there, so
      the client is referred: C{NO [REFERRAL imap://alice@HOST/]}.
      (nginx would proxy there instead.)
    - C{Auth-Nologin: no} with C{Auth-Server}: log in here, and suggest
      HOST: C{OK [REFERRAL ...]}.
    - C{Auth-Reason: TEXT}: the text of the referral reply.

A service that is down, slow (the whole answer, body included, within
C{timeout}) or answers other than HTTP 200 gives the client
C{NO [UNAVAILABLE]}: a temporary failure, not a wrong password. The request
never blocks the server: C{Agent} is asynchronous; if the client hangs up
or the time runs out, the HTTP connection is closed.
"""

from __future__ import annotations

from urllib.parse import quote

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.strcred import ICheckerFactory, InvalidAuthArgumentString
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Protocol
from twisted.plugin import IPlugin
from twisted.web.client import Agent
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from zope.interface import implementer

from imapreferral import AvatarId, LoginReferral, Referral, TemporaryFailure


@implementer(ICredentialsChecker)
class HTTPAuthChecker:
    """Asks C{url} about each login; see the module docstring."""

    credentialInterfaces = (IUsernamePassword,)  # cleartext only: no CRAM-MD5 is offered

    def __init__(self, url: str, reactor: object, timeout: float = 10.0) -> None:
        self.url = url
        self.reactor = reactor
        self.timeout = timeout
        self.agent = Agent(reactor, connectTimeout=timeout)

    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred[AvatarId]:
        return Deferred.fromCoroutine(self._check(credentials))

    async def _check(self, credentials: IUsernamePassword) -> AvatarId:
        context = getattr(credentials, "context", None)  # imapreferral's LoginContext
        headers = Headers(
            {
                "Auth-Method": ["plain"],
                "Auth-User": [quote(credentials.username, safe="")],
                "Auth-Pass": [quote(credentials.password, safe="")],
                "Auth-Protocol": ["imap"],
                "Auth-Login-Attempt": ["1"],
                "Client-IP": [getattr(context, "remoteIP", None) or ""],
            }
        )
        exchange = Deferred.fromCoroutine(self._ask(headers))
        exchange.addTimeout(self.timeout, self.reactor)  # request and body together
        try:
            response = await exchange
        except CancelledError:
            raise  # the client hung up: nothing to report
        except Exception as e:
            raise TemporaryFailure(f"auth-http {self.url}: {e}") from e
        if response.code != 200:
            raise TemporaryFailure(f"auth-http {self.url}: HTTP {response.code}")

        def header(name: str) -> str | None:
            values = response.headers.getRawHeaders(name)
            return values[0] if values else None

        if header("Auth-Status") != "OK":
            raise UnauthorizedLogin(header("Auth-Status") or "refused")
        user = credentials.username.decode("utf-8", "surrogateescape")
        host = header("Auth-Server")
        if host is None:
            return AvatarId(username=user)  # log in here
        port = header("Auth-Port")
        referral = Referral(
            user=user,
            host=host,
            port=int(port) if port and port.isdigit() else None,
            reason=header("Auth-Reason"),
        )
        if header("Auth-Nologin") == "no":
            return AvatarId(username=user, referral=referral)  # OK [REFERRAL ...]
        raise LoginReferral(referral)  # NO [REFERRAL ...]

    async def _ask(self, headers: Headers) -> IResponse:
        """The answer, once its body is read too (only its headers matter)."""
        response = await self.agent.request(b"GET", self.url.encode("ascii"), headers)
        body = _Body()
        response.deliverBody(body)
        await body.done
        return response


class _Body(Protocol):
    """
    An answer's body, read and dropped. Unlike C{readBody}, giving up on it
    (a timeout, the client gone) closes the connection: C{Agent}'s transport
    has no C{abortConnection} for C{readBody} to call.
    """

    def __init__(self) -> None:
        self.done: Deferred[None] = Deferred(lambda _: self.transport.stopProducing())

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: object) -> None:
        if not self.done.called:
            self.done.callback(None)


@implementer(ICheckerFactory, IPlugin)
class HTTPAuthCheckerFactory:
    """What C{--auth auth-http:URL} finds; C{--help-auth} shows the texts."""

    authType = "auth-http"
    argStringFormat = "URL of an nginx-style auth_http service, e.g. http://127.0.0.1:9000/auth"
    authHelp = """
Asks an HTTP service about each login, with nginx's auth_http headers
(Auth-User, Auth-Pass, Client-IP). Its answer's Auth-Status: OK logs the
user in; Auth-Server (and Auth-Port) refers them there; Auth-Nologin: no
logs in here and suggests the server; Auth-Reason is the reply's text.
"""
    credentialInterfaces = HTTPAuthChecker.credentialInterfaces

    def generateChecker(self, argstring: str) -> HTTPAuthChecker:
        if not argstring.startswith(("http://", "https://")):
            raise InvalidAuthArgumentString("give an http:// or https:// URL")
        from twisted.internet import reactor

        return HTTPAuthChecker(argstring, reactor)


authHTTP = HTTPAuthCheckerFactory()
