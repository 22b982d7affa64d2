"""
Refer or proxy, per client, as tables: what we recognise before login, what
each mode gives each client, and who gets c-client's one-prompt form.
"""

from __future__ import annotations

import pytest

from imapreferral.login.client import (
    AUTO,
    C_CLIENT,
    DEFAULT_REFERRAL_CLIENT_NAMES,
    PROXY,
    REFER,
    UNKNOWN,
    byeBeforeReferral,
    recogniseClient,
    referOrProxy,
)

FOLLOWERS = DEFAULT_REFERRAL_CLIENT_NAMES

RECOGNITION = [
    # Alpine 2.26, measured: its first command after the greeting.
    ("alpine-first", [b"00000000"], None, C_CLIENT),
    ("alpine-capability-then-login", [b"00000000", b"00000001"], None, C_CLIENT),
    # After following a referral the process's counter goes on.
    ("alpine-after-referral", [b"00000002"], None, C_CLIENT),
    ("c-client-hex-letters", [b"0000000a", b"0000000b"], None, C_CLIENT),
    ("imaplib", [b"KDOE1", b"KDOE2"], None, UNKNOWN),
    ("mutt", [b"a0000", b"a0001"], None, UNKNOWN),
    ("curl", [b"A001"], None, UNKNOWN),
    ("twisted", [b"0001"], None, UNKNOWN),
    ("nine-hex-digits", [b"000000000"], None, UNKNOWN),
    ("upper-case-hex-is-not-printf-lx", [b"0000000A"], None, UNKNOWN),
    ("one-tag-not-hex", [b"00000000", b"a1"], None, UNKNOWN),
    ("no-tags", [], None, UNKNOWN),
    ("id-alpine", [b"a1", b"a2"], "Alpine", "alpine"),
    ("id-pine-spaces", [b"a1"], " PINE ", "pine"),
    ("id-thunderbird", [b"1", b"2"], "Thunderbird", UNKNOWN),
    ("id-empty", [b"a1"], "", UNKNOWN),
    ("id-name-and-c-client-tags", [b"00000000"], "Alpine", C_CLIENT),
    ("id-hostile-name", [b"a1"], 'alpine" client=x', UNKNOWN),
]


@pytest.mark.parametrize(
    ("tags", "idName", "expected"),
    [row[1:] for row in RECOGNITION],
    ids=[row[0] for row in RECOGNITION],
)
def test_recogniseClient(tags, idName, expected):
    assert recogniseClient(tags, idName, FOLLOWERS) == expected


def test_followerNamesAreTheAdministratorsChoice():
    assert recogniseClient([b"a1"], "Alpine", ("mymailer",)) == UNKNOWN
    assert recogniseClient([b"a1"], "MyMailer", ("mymailer",)) == "mymailer"


MODES = [
    ("refer-c-client", REFER, C_CLIENT, REFER),
    ("refer-named", REFER, "alpine", REFER),
    ("refer-unknown", REFER, UNKNOWN, REFER),
    ("proxy-c-client", PROXY, C_CLIENT, PROXY),
    ("proxy-named", PROXY, "alpine", PROXY),
    ("proxy-unknown", PROXY, UNKNOWN, PROXY),
    ("auto-c-client", AUTO, C_CLIENT, REFER),
    ("auto-named", AUTO, "alpine", REFER),
    ("auto-unknown", AUTO, UNKNOWN, PROXY),
]


@pytest.mark.parametrize(
    ("mode", "client", "expected"),
    [row[1:] for row in MODES],
    ids=[row[0] for row in MODES],
)
def test_referOrProxy(mode, client, expected):
    assert referOrProxy(mode, client) == expected


BYE = [
    ("c-client-authenticate", C_CLIENT, True, True),
    ("c-client-login", C_CLIENT, False, False),
    ("named-authenticate", "alpine", True, False),
    ("unknown-authenticate", UNKNOWN, True, False),
    ("unknown-login", UNKNOWN, False, False),
]


@pytest.mark.parametrize(
    ("client", "sasl", "expected"),
    [row[1:] for row in BYE],
    ids=[row[0] for row in BYE],
)
def test_byeBeforeReferralOnlyForCClientOnAuthenticate(client, sasl, expected):
    assert byeBeforeReferral(client, sasl) is expected


# Review of issue 9: defects found.


def test_anIDNameNeverMakesAClientCClient():
    """
    C{--referral-client-names c-client} is accepted, and a client whose
    C{ID} says that name is then taken for c-client by its name alone:
    with imaplib's tags it gets the one-prompt C{BYE} form that "nobody
    else ever gets" (other clients report the C{BYE} as an aborted
    connection). Only the tags may say c-client.
    """
    client = recogniseClient([b"KDOE1", b"KDOE2"], "c-client", ("c-client",))
    assert client != C_CLIENT
    assert not byeBeforeReferral(client, sasl=True)


def test_cClientTagsAreNotAFollowerWhenTheAdminTookCClientOut():
    assert recogniseClient([b"00000000"], None, ("alpine", "pine")) == UNKNOWN
