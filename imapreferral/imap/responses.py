"""
Login outcomes in IMAP words: one function from outcome to tagged reply
(L{renderOutcome}), and one for how a proxied login ended
(L{renderBackendResult}).

The wording is Dovecot's (C{imap_client_auth_result()}), including the
response codes of RFC 2221 and RFC 5530; a proxied login's is the backend
dialogue's (L{imapreferral.imap.backendresult}).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

import attrs

from imapreferral.imap.backendresult import BackendLoggedIn, BackendResult
from imapreferral.imap.url import IMAPURL
from imapreferral.login.outcome import (
    AuthorizationRefused,
    Disable,
    LoggedIn,
    Outcome,
    PlaintextUnavailable,
    PrivacyRequired,
    Refer,
    Referral,
    Reject,
)

REFER_TEXT = "Try this server instead."
SUGGEST_TEXT = "Logged in, but you should use this server instead."
DISABLED_TEXT = "Login disabled for this user"
LOGGED_IN_TEXT = b"Logged in"
FAILED = b"[AUTHENTICATIONFAILED] Authentication failed."
UNAVAILABLE = b"[UNAVAILABLE] Temporary authentication failure."
PRIVACY_REQUIRED = (
    b"[PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure (SSL/TLS) connections."
)
#: RFC 5530 CANNOT: it can never succeed here, whatever the client does.
PLAINTEXT_UNAVAILABLE = b"[CANNOT] Plaintext authentication is not available here."
AUTHORIZATION_FAILED = b"[AUTHORIZATIONFAILED] Authorization failed."


#: Unicode category Cc: C0 controls, DEL and C1 controls.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")


def sanitiseText(text: str | None, default: str) -> bytes:
    """
    Make passdb text safe as IMAP C{text} (RFC 3501 §9: one line of
    TEXT-CHAR). Control characters, CR and LF among them, become spaces, so
    a C{reason} cannot inject protocol lines (Dovecot sends it raw). An empty
    or blank text falls back to C{default}: C{text} must not be empty.
    """
    cleaned = None if text is None else _CONTROLS.sub(" ", text)
    if cleaned is None or not cleaned.strip():
        cleaned = default
    return cleaned.encode("utf-8", "surrogateescape")


@lru_cache(maxsize=4096)
def referralURL(referral: Referral, auth: str) -> str:
    """
    The referral's C{imap://} URL with C{;AUTH=auth}. Cached: the same few
    referrals are rendered over and over (referrals are immutable).
    """
    return IMAPURL.fromReferral(referral, auth).asText()


def _referralCode(referral: Referral, auth: str) -> bytes:
    return b"[REFERRAL " + referralURL(referral, auth).encode("ascii") + b"] "


def renderOutcome(
    outcome: Outcome, auth: str, capabilities: Callable[[], bytes]
) -> tuple[bytes, bytes]:
    """
    The tagged reply for a login outcome, as C{(status, text)}.

    @param auth: What to put in C{;AUTH=}: the mechanism used or C{*}.
    @param capabilities: Returns the post-login capability list,
        space-separated, for a plain C{OK [CAPABILITY ...] Logged in}.
    """
    if isinstance(outcome, LoggedIn):
        if outcome.referral is not None:
            text = sanitiseText(outcome.referral.reason, SUGGEST_TEXT)
            return b"OK", _referralCode(outcome.referral, auth) + text
        return b"OK", b"[CAPABILITY " + capabilities() + b"] " + LOGGED_IN_TEXT
    if isinstance(outcome, Refer):
        text = sanitiseText(outcome.referral.reason, REFER_TEXT)
        return b"NO", _referralCode(outcome.referral, auth) + text
    if isinstance(outcome, Disable):
        return b"NO", b"[CONTACTADMIN] " + sanitiseText(outcome.reason, DISABLED_TEXT)
    if isinstance(outcome, Reject):
        return b"NO", FAILED
    if isinstance(outcome, PrivacyRequired):
        return b"NO", PRIVACY_REQUIRED  # RFC 3501 §6.2.3 wants NO (Twisted says BAD)
    if isinstance(outcome, PlaintextUnavailable):
        return b"NO", PLAINTEXT_UNAVAILABLE
    if isinstance(outcome, AuthorizationRefused):
        return b"NO", AUTHORIZATION_FAILED
    return b"NO", UNAVAILABLE


def renderBackendResult(
    tag: bytes,
    result: BackendResult,
    capabilityAsked: bool = False,
    suggest: Referral | None = None,
    auth: str = "*",
) -> bytes:
    """
    What the client gets when its proxied login ends, untagged lines
    included: the backend dialogue's wording, except that a
    C{--local-backend} login that suggests a referral gets our C{OK
    [REFERRAL ...]} (with the backend's capabilities first, untagged).

    @param capabilityAsked: Whether the client asked for C{CAPABILITY}
        before logging in (it then gets the backend's).
    @param suggest: The referral to suggest in the tagged C{OK}, if any.
    @param auth: What the referral's C{;AUTH=} says.
    """
    if not isinstance(result, BackendLoggedIn):
        return result.clientBytes(tag)
    if suggest is None:
        return result.clientBytes(tag, capabilityAsked)
    text = sanitiseText(suggest.reason, SUGGEST_TEXT)
    reply = attrs.evolve(result, response=b"OK " + _referralCode(suggest, auth) + text)
    return reply.clientBytes(tag, capabilityAsked=True)
