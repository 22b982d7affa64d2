"""
The authentication log: one line per login, never the password.

What we know comes first, what the client chose comes last and quoted
(L{imapreferral.logtext.quote}), so no user name can put words where the
address goes; the first C{remote=} of a line is always the real address:

  login remote=192.0.2.7 local=192.0.2.1:143 mech=PLAIN: authentication failed user="alice"

C{examples/fail2ban/} matches these lines. The event also carries the
fields apart (C{event}, C{session}, C{user}, C{remote}, C{local},
C{mechanism}, C{tls}, C{result}, C{referral}, C{backend}, C{why},
C{durationMs}, C{referralHost}) for structured logs
(L{imapreferral.jsonlog}) and metrics (L{imapreferral.metrics}); text
logs print C{summary}, with the session id in the line's system.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from twisted.logger import Logger

from imapreferral.login.outcome import (
    AuthorizationRefused,
    Disable,
    LoggedIn,
    Outcome,
    PlaintextUnavailable,
    PrivacyRequired,
    ProxyLogin,
    Refer,
    Referral,
    Reject,
)
from imapreferral.logtext import literalFormat, quote, sessionSystem

_log = Logger()

#: Longest user name logged, in bytes: RFC 5321's longest path (256)
#: holds any real mail address; longer names are cut, marked.
USER_LIMIT = 256
#: A temporary failure's cause is logged in full once where it happens (the
#: SQL passdb's "unavailable" line); each login repeats a short form.
WHY_LIMIT = 160

#: The result of a referral proxied because the client would not follow it.
PROXIED_INSTEAD = "proxied-instead-of-referral"
#: Results whose line names the client recognised (C{client=}): how many
#: users are still proxied, and by which clients.
_NAMES_CLIENT = frozenset({"referred", PROXIED_INSTEAD})

#: A UNIX socket path we may print bare (it is the administrator's, but
#: a space or a quote would still blur the line).
_BARE_PATH = re.compile(r"[!#-\[\]-~]+")


def describeOutcome(outcome: Outcome) -> str:
    """A few fixed words for the log: the C{result} field."""
    if isinstance(outcome, LoggedIn):
        return "logged in" if outcome.referral is None else "logged in with referral"
    if isinstance(outcome, Refer):
        return "referred"
    if isinstance(outcome, Disable):
        return "login disabled"
    if isinstance(outcome, Reject):
        return "authentication failed"
    if isinstance(outcome, ProxyLogin):
        return "proxying" if outcome.insteadOf is None else PROXIED_INSTEAD
    if isinstance(outcome, PrivacyRequired):
        return "plaintext authentication refused without TLS"
    if isinstance(outcome, PlaintextUnavailable):
        return "plaintext authentication not available (no checker takes passwords)"
    if isinstance(outcome, AuthorizationRefused):
        return "authorization refused"
    return "temporary failure"


def plainReferralText(referral: Referral, mechanism: str) -> str:
    """The referral for the log when no protocol says how to write it."""
    port = "" if referral.port is None else f":{referral.port}"
    return f"{referral.user} at {referral.host}{port}"


def _unixText(path: str | bytes) -> str:
    if isinstance(path, bytes):
        path = path.decode("utf-8", "surrogateescape")
    return "unix:" + (path if _BARE_PATH.fullmatch(path) else quote(path))


def remoteText(context: object) -> str:
    """
    Who the client is: its address; for a UNIX socket, whose peer has no
    name, C{unix:} and the path it connected to; else C{-}.
    """
    remote = getattr(context, "remoteIP", None)
    if remote is not None:
        return remote
    path = getattr(context, "socketPath", None)
    return "-" if path is None else _unixText(path)


def localText(context: object) -> str:
    """What the client connected to: C{address:port}, C{[v6]:port} or C{unix:path}."""
    local = getattr(context, "localIP", None)
    if local is None:
        path = getattr(context, "socketPath", None)
        return "-" if path is None else _unixText(path)
    port = getattr(context, "localPort", None)
    return f"[{local}]:{port}" if ":" in local else f"{local}:{port}"


def loginSummary(
    remote: str,
    local: str,
    mechanism: str,
    result: str,
    user: str | None,
    client: str | None = None,
) -> str:
    """
    A login line up to and including the user name: the known fields
    (L{remoteText}, L{localText}, mechanism, the client recognised if
    given, C{result}), then the quoted name (L{None}: no name was read).
    """
    known = f"mech={mechanism}" if client is None else f"mech={mechanism} client={client}"
    line = f"login remote={remote} local={local} {known}: {result}"
    return line if user is None else f"{line} user={quote(user, USER_LIMIT)}"


def logAuthentication(
    outcome: Outcome,
    credentials: object,
    referralText: Callable[[Referral, str], str],
    duration: float | None = None,
) -> None:
    """
    The one line per authentication, logged at C{info} whatever the outcome:
    it is the authentication log, and a level filter must not drop part of
    it. Faults behind a temporary failure are logged where they happen, once
    (the SQL passdb's "unavailable" and "back" lines), as warnings or errors.

    @param duration: Seconds from the start of the check to its outcome.
    """
    context = getattr(credentials, "context", None)
    mechanism = getattr(context, "mechanism", "?")
    name: bytes = credentials.username  # type: ignore[attr-defined]
    result = describeOutcome(outcome)
    remote = remoteText(context)
    user = name.decode("utf-8", "surrogateescape")
    local = localText(context)
    # Our own word (recogniseClient), never the client's text: printed bare.
    client = getattr(context, "client", None) if result in _NAMES_CLIENT else None
    summary = loginSummary(remote, local, mechanism, result, user, client)
    referral = getattr(outcome, "referral", None)
    text = why = backend = None
    if referral is not None:
        text = referralText(referral, mechanism)
        summary += f" referral={quote(text)}"
    elif isinstance(outcome, ProxyLogin):
        backend = outcome.destination.address
        summary += f" backend={quote(backend)}"
        if outcome.insteadOf is not None:
            text = referralText(outcome.insteadOf, mechanism)
            summary += f" referral={quote(text)}"
    elif result == "temporary failure":
        why = outcome.why  # type: ignore[union-attr]
        summary += f" why={quote(why, WHY_LIMIT)}"
    # The text is the format, not "{summary}": Twisted's text observers then
    # look up no field, about 1.5 us less per line (benchmarks/log_line.py),
    # which pays for the richer line on the hot path.
    session = getattr(context, "session", None)
    _log.info(
        literalFormat(summary),
        summary=summary,
        event="login",
        log_system=sessionSystem(_log.namespace, "info", session),
        session=session,
        user=user if user.isascii() else _readable(user),
        remote=remote,
        local=local,
        mechanism=mechanism,
        tls=getattr(context, "secured", None),
        result=result,
        referral=text,
        backend=backend,
        referralHost=None if referral is None else referral.host,
        why=why,
        durationMs=None if duration is None else round(duration * 1000, 3),
        client=client,
    )


def logRefusal(
    context: object,
    mechanism: str,
    outcome: PrivacyRequired | PlaintextUnavailable | AuthorizationRefused,
) -> None:
    """
    A login refused before any password was checked (plaintext without
    TLS, a PLAIN authorization identity), in the same form: the user name
    if one was read (undecodable bytes as surrogates) and the identity the
    client asked to act as.
    """
    result = describeOutcome(outcome)
    user = authzid = None
    if isinstance(outcome, AuthorizationRefused):
        user, authzid = outcome.user, outcome.authzid
    remote = remoteText(context)
    local = localText(context)
    summary = loginSummary(remote, local, mechanism, result, user)
    if authzid is not None:
        summary += f" authzid={quote(authzid, USER_LIMIT)}"
    session = getattr(context, "session", None)
    _log.info(
        "{summary}",
        summary=summary,
        event="login",
        log_system=sessionSystem(_log.namespace, "info", session),
        session=session,
        user=None if user is None else _readable(user),
        remote=remote,
        local=local,
        mechanism=mechanism,
        tls=getattr(context, "secured", None),
        result=result,
    )


def _readable(name: str) -> str:
    """Undecodable bytes as U+FFFD, for observers that print fields as they are."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
