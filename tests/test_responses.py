"""Outcome to reply text, and reason sanitising."""

from __future__ import annotations

import pytest

from imapreferral.imap.backendresult import (
    BackendAuthFailed,
    BackendLoggedIn,
    BackendRefused,
    BackendUnavailable,
)
from imapreferral.imap.responses import renderBackendResult, renderOutcome, sanitiseText
from imapreferral.login.context import LoginContext
from imapreferral.login.outcome import (
    AuthorizationRefused,
    Disable,
    PrivacyRequired,
    Refer,
    Referral,
    Reject,
    Unavailable,
)
from imapreferral.login.sasl import PlainMechanism


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Moved", b"Moved"),
        ("line1\r\n* BYE injected\ttab", b"line1  * BYE injected tab"),  # CR LF TAB become spaces
        ("a\x00b\x7fc\x85d", b"a b c d"),  # NUL, DEL and C1 controls too
        ("Server ist überlastet", "Server ist überlastet".encode()),  # UTF-8 stays
        ("", b"default"),  # empty text is not allowed after a code: default
        ("  ", b"default"),
        ("\x01\r\n", b"default"),  # blank once sanitised
        (None, b"default"),
    ],
)
def test_sanitiseText(text, expected):
    assert sanitiseText(text, "default") == expected


def test_referralReply():
    assert renderOutcome(Refer(Referral("u", "h")), "PLAIN", bytes) == (
        b"NO",
        b"[REFERRAL imap://u;AUTH=PLAIN@h/] Try this server instead.",
    )


def test_failureRepliesSayNothingMore():
    assert renderOutcome(Reject(), "PLAIN", bytes) == (
        b"NO",
        b"[AUTHENTICATIONFAILED] Authentication failed.",
    )
    assert renderOutcome(Unavailable("db down: secret detail"), "PLAIN", bytes) == (
        b"NO",
        b"[UNAVAILABLE] Temporary authentication failure.",
    )
    assert renderOutcome(Disable(), "PLAIN", bytes) == (
        b"NO",
        b"[CONTACTADMIN] Login disabled for this user",
    )


@pytest.mark.parametrize(
    ("outcome", "reply"),
    [
        (
            PrivacyRequired(),
            b"[PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure"
            b" (SSL/TLS) connections.",
        ),
        (AuthorizationRefused("alice", "bob"), b"[AUTHORIZATIONFAILED] Authorization failed."),
    ],
    ids=["privacyRequired", "authorizationRefused"],
)
def test_refusalsBeforeAnyCheckAreTaggedNo(outcome, reply):
    assert renderOutcome(outcome, "PLAIN", bytes) == (b"NO", reply)


def test_plainWithAnotherAuthzidIsTheAuthorizationRefusedOutcome():
    mechanism = PlainMechanism(LoginContext("192.0.2.7", 1, "192.0.2.1", 143, "PLAIN"))
    assert mechanism.step(b"bob\0alice\0secret") == AuthorizationRefused("alice", "bob")


_BACKEND_OK = BackendLoggedIn(b"OK [CAPABILITY IMAP4rev1] Logged in", (b"IMAP4rev1", b"IDLE"))


@pytest.mark.parametrize(
    ("result", "capabilityAsked", "suggest", "reply"),
    [
        (
            BackendAuthFailed("NO wrong password"),
            False,
            None,
            b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n",
        ),
        (
            BackendUnavailable("connect", "refused", untagged=(b"* BYE going",)),
            False,
            None,
            b"* BYE going\r\na NO [UNAVAILABLE] Account is temporarily unavailable.\r\n",
        ),
        (BackendRefused(b"NO [LIMIT] x"), False, None, b"a NO [LIMIT] x\r\n"),
        (_BACKEND_OK, False, None, b"a OK [CAPABILITY IMAP4rev1] Logged in\r\n"),
        (
            _BACKEND_OK,
            True,
            None,
            b"* CAPABILITY IMAP4rev1 IDLE\r\na OK [CAPABILITY IMAP4rev1] Logged in\r\n",
        ),
        (
            _BACKEND_OK,
            False,
            Referral("u", "h"),
            b"* CAPABILITY IMAP4rev1 IDLE\r\n"
            b"a OK [REFERRAL imap://u;AUTH=PLAIN@h/] Logged in, but you should use this server"
            b" instead.\r\n",
        ),
    ],
    ids=["authFailed", "unavailable", "refused", "loggedIn", "loggedInAsked", "suggest"],
)
def test_renderBackendResult(result, capabilityAsked, suggest, reply):
    assert renderBackendResult(b"a", result, capabilityAsked, suggest, "PLAIN") == reply
