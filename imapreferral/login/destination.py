"""
From a passdb reply that says C{proxy} to a L{ProxyDestination}: Dovecot's
defaults (port 143, or 993 with C{ssl=yes}; C{proxy_timeout} 30 s) and its
rule that the backend password is C{pass}, else the one the client sent.
"""

from __future__ import annotations

from imapreferral.login.fields import PassdbReply
from imapreferral.login.outcome import (
    IMPLICIT_TLS,
    PLAIN,
    STARTTLS,
    ProxyDestination,
    Unavailable,
)

#: Dovecot's C{login_proxy_timeout}.
DEFAULT_PROXY_TIMEOUT = 30.0


def proxyDestination(
    reply: PassdbReply,
    user: str,
    clientPassword: str | None,
    defaultTimeout: float = DEFAULT_PROXY_TIMEOUT,
) -> ProxyDestination | Unavailable:
    """
    Where and how to log C{user} in to the backend C{reply} names.

    @param user: The backend user, as L{imapreferral.login.decision.decide}
        worked it out (C{destuser}, C{user} or the login name).
    @param clientPassword: The password the client sent, or L{None} when
        its mechanism carries none (CRAM-MD5): then the passdb must give
        C{pass}, as in Dovecot ("proxy: pass field is missing").
    @return: The destination, or L{Unavailable} saying why there is none.
    """
    fields = reply.proxyFields
    host = (reply.host or "").strip()
    if not host:
        return Unavailable("proxy: host field not given")
    password = fields.password if fields.password is not None else clientPassword
    if password is None:
        return Unavailable("proxy: pass field is missing and the mechanism carried no password")
    if fields.starttls:
        tls, verify = STARTTLS, "any-cert" not in (fields.starttls, fields.ssl)
    elif fields.ssl:
        tls, verify = IMPLICIT_TLS, fields.ssl != "any-cert"
    else:
        tls, verify = PLAIN, True
    return ProxyDestination(
        host=host[1:-1] if host.startswith("[") and host.endswith("]") else host,
        port=reply.port or (993 if tls == IMPLICIT_TLS else 143),
        user=user,
        password=password,
        master=fields.master,
        hostip=fields.hostip,
        tls=tls,
        verifyCertificate=verify,
        timeout=fields.timeout if fields.timeout is not None else defaultTimeout,
        pipelining=not fields.nopipelining,
        sendID=not fields.notTrusted,
        sourceIP=fields.sourceIP,
        forward=fields.forward,
    )
