"""
The referral rule, whole, as one pure function.

Dovecot's C{client_auth_handle_reply()} order: C{proxy} wins over C{host},
C{host} makes a referral, C{nologin} decides between "refer only" and "log
in and suggest". C{proxy_maybe} is C{proxy} here: the checker clears it
first when the destination is this server. A wrong password never reaches the referral fields.
"""

from __future__ import annotations

from imapreferral.login.fields import PassdbReply
from imapreferral.login.outcome import (
    Accept,
    Decision,
    Disable,
    Proxy,
    Refer,
    Referral,
    Reject,
    Unavailable,
)


def decide(reply: PassdbReply | None, passwordOk: bool, loginName: str) -> Decision:
    """
    Decide what a login comes to.

    @param reply: The passdb's reply, or L{None} for an unknown user.
    @param passwordOk: Whether the client's password matched the stored
        one. Ignored when the reply says C{nopassword}.
    @param loginName: The normalised name the client logged in with; the
        referral uses it unless the passdb gives C{user} or C{destuser}.
    """
    if reply is None:
        return Reject()
    if not (passwordOk or reply.nopassword):
        return Reject(nodelay=reply.nodelay)
    user = reply.user if reply.user is not None else loginName
    target = reply.destuser if reply.destuser is not None else user
    host = None if reply.host is None else reply.host.strip()
    if reply.proxy or reply.proxyMaybe:
        if not host:
            return Unavailable("passdb set proxy without a host")
        return Proxy(host=host, port=reply.port, user=target)
    if host is not None:
        if not host:
            return Unavailable("passdb returned an empty host")
        referral = Referral(user=target, host=host, port=reply.port, reason=reply.reason)
        if reply.nologin:
            return Refer(referral, verified=passwordOk)
        return Accept(user=user, referral=referral)
    if reply.nologin:
        return Disable(reason=reply.reason)
    return Accept(user=user)
