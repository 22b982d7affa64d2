"""
What one login to a proxy backend comes to, as frozen values, and the
exact texts Dovecot sends the client for each (C{login-proxy.h},
C{login-common.h}, C{imap-proxy.c}). L{imapreferral.imap.backend} produces
them; each says what the client gets after its tag (C{response}), whether
another attempt may help (C{retryable}), and the state and cause for the
one-line log.
"""

from __future__ import annotations

import attrs

#: The texts Dovecot sends (C{login-proxy.h}, C{login-common.h}).
UNAVAILABLE_TEXT = b"Account is temporarily unavailable."
AUTH_FAILED = b"NO [AUTHENTICATIONFAILED] Authentication failed."
NO_UNAVAILABLE = b"NO [UNAVAILABLE] " + UNAVAILABLE_TEXT
NO_SERVERBUG = b"NO [SERVERBUG] " + UNAVAILABLE_TEXT

#: The failure states a log line names (Dovecot: C{state=banner} ...).
CONNECT, BANNER, STARTTLS_STATE, LOGIN = "connect", "banner", "starttls", "login"


@attrs.frozen
class BackendLoggedIn:
    """
    The backend accepted the login.

    @ivar response: The tagged OK for the client, after its tag: the
        backend's C{OK [CAPABILITY ...] text} as is, or ours with the
        capabilities we learned inserted.
    @ivar capabilities: The capability list for an untagged C{* CAPABILITY}
        when the client asked before logging in (Dovecot does the same).
    @ivar untagged: Backend lines to pass on first (C{* OK [ALERT] ...}).
    @ivar leftover: Bytes the backend sent after its tagged OK, for the
        relay to deliver first.
    """

    response: bytes
    capabilities: tuple[bytes, ...]
    untagged: tuple[bytes, ...] = ()
    leftover: bytes = b""

    def clientBytes(self, tag: bytes, capabilityAsked: bool = False) -> bytes:
        """What the client gets: passed-on lines, C{* CAPABILITY}, our OK."""
        lines = list(self.untagged)
        if capabilityAsked:
            lines.append(b"* CAPABILITY " + b" ".join(self.capabilities))
        lines.append(tag + b" " + self.response)
        return b"".join(line + b"\r\n" for line in lines)


def _failureBytes(failure: BackendFailure, tag: bytes) -> bytes:
    lines = [*failure.untagged, tag + b" " + failure.response]
    return b"".join(line + b"\r\n" for line in lines)


#: A relayed refusal's log cause is the backend's own line, made printable.
_CAUSE_FROM_RESPONSE = attrs.Factory(lambda self: logText(self.response), takes_self=True)


@attrs.frozen
class BackendUnavailable:
    """
    Connect refused or timed out, bad banner, protocol error, STARTTLS
    refused, backend closed during login: retried, then
    C{NO [UNAVAILABLE] Account is temporarily unavailable.}
    """

    state: str
    cause: str
    untagged: tuple[bytes, ...] = ()
    retryable = True
    response = NO_UNAVAILABLE
    clientBytes = _failureBytes


@attrs.frozen
class BackendMisconfigured:
    """
    A configuration problem that retrying cannot fix (bad certificate,
    STARTTLS not offered, LOGINDISABLED on plaintext, a loop, the backend's
    C{NO [SERVERBUG]}): C{NO [SERVERBUG] Account is temporarily unavailable.}
    """

    state: str
    cause: str
    untagged: tuple[bytes, ...] = ()
    retryable = False
    response = NO_SERVERBUG
    clientBytes = _failureBytes


@attrs.frozen
class BackendAuthFailed:
    """
    The backend refused the login (C{NO [AUTHENTICATIONFAILED]}, C{NO} or
    C{BAD} without a code): our own text, so the backend's wording cannot
    tell an attacker which users exist. C{cause} keeps it for the log.
    """

    cause: str
    untagged: tuple[bytes, ...] = ()
    state = LOGIN
    retryable = False
    response = AUTH_FAILED
    clientBytes = _failureBytes


@attrs.frozen
class BackendTempFail:
    """The backend said C{NO [UNAVAILABLE] text}: retried, then relayed."""

    response: bytes
    cause: str = attrs.field(default=_CAUSE_FROM_RESPONSE)
    untagged: tuple[bytes, ...] = ()
    state = LOGIN
    retryable = True
    clientBytes = _failureBytes


@attrs.frozen
class BackendRefused:
    """The backend said C{NO [CODE] text} (LIMIT, EXPIRED, ...): relayed."""

    response: bytes
    cause: str = attrs.field(default=_CAUSE_FROM_RESPONSE)
    untagged: tuple[bytes, ...] = ()
    state = LOGIN
    retryable = False
    clientBytes = _failureBytes


@attrs.frozen
class BackendReferral:
    """
    The backend said C{NO [REFERRAL imap://...]}: the front follows it
    itself (the client never sees it); C{url} is the URL as sent.
    """

    url: str
    cause: str = attrs.field(
        default=attrs.Factory(lambda self: f"backend referred to {self.url}", takes_self=True)
    )
    untagged: tuple[bytes, ...] = ()
    state = LOGIN
    retryable = False
    response = NO_UNAVAILABLE
    clientBytes = _failureBytes


BackendFailure = (
    BackendUnavailable
    | BackendMisconfigured
    | BackendAuthFailed
    | BackendTempFail
    | BackendRefused
    | BackendReferral
)
BackendResult = BackendLoggedIn | BackendFailure


def logText(data: bytes, limit: int = 160) -> str:
    """Backend text for a log line: decoded, controls escaped, cut short."""
    text = data[:limit].decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
