"""SASL exchanges sans IO: the client's lines in, the next step out."""

from __future__ import annotations

from base64 import b64encode

import pytest

from imapreferral.login.context import LoginContext
from imapreferral.login.credentials import PasswordCredentials
from imapreferral.login.outcome import AuthorizationRefused
from imapreferral.login.sasl import (
    Challenge,
    CramMD5Mechanism,
    LoginMechanism,
    PlainMechanism,
    SASLExchange,
    SASLFailed,
    decodeBase64,
)

CONTEXT = LoginContext("192.0.2.7", 40000, "192.0.2.1", 143, "PLAIN")


@pytest.mark.parametrize(
    ("data", "initial", "decoded"),
    [
        (b"YWxpY2U=", False, b"alice"),
        (b"=", True, b""),
        (b"=", False, None),
        (b"YWxp Y2U=", False, None),
        (b"YWxpY2U", False, None),
        (b"", False, b""),
    ],
    ids=["valid", "emptyInitial", "equalsLater", "space", "unpadded", "empty"],
)
def test_decodeBase64(data, initial, decoded):
    assert decodeBase64(data, initial) == decoded


@pytest.mark.parametrize(
    ("mechanism", "initial", "step"),
    [
        (PlainMechanism, None, Challenge(b"")),
        (PlainMechanism, b64encode(b"\0alice\0pw"), (b"alice", b"pw")),
        (PlainMechanism, b64encode(b"bob\0alice\0pw"), AuthorizationRefused("alice", "bob")),
        (PlainMechanism, b"=", SASLFailed("Invalid PLAIN response.")),
        (PlainMechanism, b"!!", SASLFailed("Invalid base64 data in initial response.")),
        (LoginMechanism, None, Challenge(b"Username:")),
        (
            CramMD5Mechanism,
            b"YQ==",
            SASLFailed("This mechanism does not take an initial response."),
        ),
    ],
    ids=[
        "noInitial",
        "plain",
        "otherAuthzid",
        "emptyInitial",
        "badBase64",
        "loginPrompt",
        "cramTakesNoInitial",
    ],
)
def test_begin(mechanism, initial, step):
    result = SASLExchange(mechanism(CONTEXT)).begin(initial)
    if isinstance(result, PasswordCredentials):  # no equality: compare what it carries
        result = (result.username, result.password)
    assert result == step


@pytest.mark.parametrize(
    ("line", "step"),
    [
        (b"*", SASLFailed("Authentication aborted by client.")),
        (b" * ", SASLFailed("Authentication aborted by client.")),
        (b"%%", SASLFailed("Invalid base64 data in continued response.")),
        (b64encode(b"alice") + b"\r", Challenge(b"Password:")),
    ],
    ids=["cancel", "cancelSpaced", "badBase64", "next"],
)
def test_respond(line, step):
    exchange = SASLExchange(LoginMechanism(CONTEXT))
    exchange.begin(None)
    assert exchange.respond(line) == step
