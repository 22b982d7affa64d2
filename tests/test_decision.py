"""The referral rule, as a table over decide(): no sockets, no passdbs."""

from __future__ import annotations

import pytest

from imapreferral.login.decision import decide
from imapreferral.login.fields import PassdbReply
from imapreferral.login.outcome import (
    Accept,
    Disable,
    Proxy,
    Refer,
    Referral,
    Reject,
    Unavailable,
)

H = "imap2.example.com"

ROWS = {
    "unknown user": (None, True, Reject()),
    "plain user": (PassdbReply(password="p"), True, Accept("bob")),
    "wrong password": (PassdbReply(password="p", host=H, nologin=True), False, Reject()),
    "wrong password nodelay": (
        PassdbReply(password="p", nodelay=True),
        False,
        Reject(nodelay=True),
    ),
    "host nologin": (PassdbReply(host=H, nologin=True), True, Refer(Referral("bob", H))),
    "host only": (PassdbReply(host=H), True, Accept("bob", Referral("bob", H))),
    "nopassword ignores password": (
        PassdbReply(host=H, nologin=True, nopassword=True),
        False,
        Refer(Referral("bob", H), verified=False),  # proves nothing: no penalty reset
    ),
    "destuser": (
        PassdbReply(host=H, nologin=True, destuser="o@x"),
        True,
        Refer(Referral("o@x", H)),
    ),
    "empty destuser kept": (
        PassdbReply(host=H, nologin=True, destuser=""),
        True,
        Refer(Referral("", H)),
    ),
    "user field renames": (
        PassdbReply(host=H, nologin=True, user="robert"),
        True,
        Refer(Referral("robert", H)),
    ),
    "port and reason": (
        PassdbReply(host=H, port=1143, reason="Moved", nologin=True),
        True,
        Refer(Referral("bob", H, 1143, "Moved")),
    ),
    "nologin without host": (PassdbReply(nologin=True, reason="x"), True, Disable("x")),
    "empty host": (
        PassdbReply(host="", nologin=True),
        True,
        Unavailable("passdb returned an empty host"),
    ),
    "proxy beats host and nologin": (
        PassdbReply(host=H, proxy=True, nologin=True),
        True,
        Proxy(H, None, "bob"),
    ),
    "proxy without host": (
        PassdbReply(proxy=True),
        True,
        Unavailable("passdb set proxy without a host"),
    ),
}


@pytest.mark.parametrize("row", ROWS)
def test_decide(row):
    reply, passwordOk, expected = ROWS[row]
    assert decide(reply, passwordOk, "bob") == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"Some.User@Example.COM", "some.user@example.com"),
        ("JÖRG".encode(), "jÖrg"),
        (b" bob ", "bob"),
    ],
)
def test_usernameNormalisedLikeDovecotLu(raw, expected):
    from imapreferral.login.checker import normaliseUsername

    assert normaliseUsername(raw) == expected


def test_usernameCaseKeptOnRequest():
    from imapreferral.login.checker import normaliseUsername

    assert normaliseUsername(b"Bob", lowercase=False) == "Bob"
