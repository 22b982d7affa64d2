"""Outcome to reply text, and reason sanitising."""

from __future__ import annotations

import pytest

from imapreferral.imap.responses import renderOutcome, sanitiseText
from imapreferral.login.outcome import Disable, Refer, Referral, Reject, Unavailable


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
