"""Dovecot extra fields parsed into PassdbReply."""

from __future__ import annotations

import pytest

from imapreferral.login.fields import FieldError, PassdbReply, splitExtraFields


def reply(text: str) -> PassdbReply:
    return PassdbReply.fromFields(splitExtraFields(text))


@pytest.mark.parametrize(
    "value", ["nologin", "nologin=y", "nologin=YES", "nologin=1", "nologin=true", "nologin="]
)
def test_flagSet(value):
    assert reply(value).nologin is True


@pytest.mark.parametrize("value", ["nologin=n", "nologin=No", "nologin=0", "nologin=false"])
def test_flagNotSet(value):
    """Unlike Dovecot, which treats any value (even N) as set."""
    assert reply(value).nologin is False


def test_meaninglessFlagIsAnError():
    with pytest.raises(FieldError, match="nologin='maybe'"):
        reply("nologin=maybe")


@pytest.mark.parametrize("value", ["port=http", "port=70000", "port=-1"])
def test_badPortIsAnError(value):
    with pytest.raises(FieldError, match="port="):
        reply(value)


def test_allFields():
    r = reply("host=h port=1143 destuser=d reason=R user=u nologin nopassword nodelay proxy x=1")
    assert r == PassdbReply(
        host="h", port=1143, destuser="d", reason="R", user="u",
        nologin=True, nopassword=True, nodelay=True, proxy=True, extra=(("x", "1"),),
    )  # fmt: skip


def test_userdbFieldsIgnored():
    assert reply("userdb_home=/x host=h") == PassdbReply(host="h")


def test_reasonStopsAtSpaceLikeDovecot():
    r = reply("reason=Custom text nologin")
    assert (r.reason, r.nologin, r.extra) == ("Custom", True, (("text", None),))


def test_nullValuedFieldIsAbsent():
    assert PassdbReply.fromFields([("host", None), ("reason", None)]) == PassdbReply()


def test_emptyHostIsKept():
    assert reply("host=").host == ""


@pytest.mark.parametrize(
    ("password", "shown"),
    [("{BLF-CRYPT}$2y$05$abcdef", "password='{BLF-CRYPT}***'"), ("pass", "password='***'"),
     (None, "password=None")],
    ids=["with scheme", "plaintext", "none"],
)  # fmt: skip
def test_replyReprShowsTheSchemeNeverThePassword(password, shown):
    text = repr(PassdbReply(password=password, host="imap2.example.com"))
    assert shown in text and "abcdef" not in text and "pass'" not in text
