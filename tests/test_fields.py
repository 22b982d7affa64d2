"""Dovecot extra fields parsed into PassdbReply."""

from __future__ import annotations

import re

import pytest

from imapreferral.login.fields import FieldError, PassdbReply, ProxyFields, splitExtraFields
from imapreferral.passdbs import PassdbConfigError, passdbFromString


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


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("proxy_maybe", PassdbReply(proxyMaybe=True)),
        ("proxy_maybe=n", PassdbReply()),
        ("hostip=192.0.2.7", PassdbReply(proxyFields=ProxyFields(hostip="192.0.2.7"))),
        ("hostip=[2001:DB8::1]", PassdbReply(proxyFields=ProxyFields(hostip="2001:db8::1"))),
        ("pass=s3cret", PassdbReply(proxyFields=ProxyFields(password="s3cret"))),
        ("master=admin", PassdbReply(proxyFields=ProxyFields(master="admin"))),
        ("ssl=yes", PassdbReply(proxyFields=ProxyFields(ssl="yes"))),
        ("ssl", PassdbReply(proxyFields=ProxyFields(ssl="yes"))),
        ("ssl=any-cert", PassdbReply(proxyFields=ProxyFields(ssl="any-cert"))),
        ("ssl=no", PassdbReply()),
        ("starttls=Any-Cert", PassdbReply(proxyFields=ProxyFields(starttls="any-cert"))),
        ("proxy_timeout=5", PassdbReply(proxyFields=ProxyFields(timeout=5.0))),
        ("proxy_timeout=500ms", PassdbReply(proxyFields=ProxyFields(timeout=0.5))),
        ("proxy_timeout=2min", PassdbReply(proxyFields=ProxyFields(timeout=120.0))),
        ("proxy_nopipelining", PassdbReply(proxyFields=ProxyFields(nopipelining=True))),
        ("proxy_not_trusted=yes", PassdbReply(proxyFields=ProxyFields(notTrusted=True))),
        ("source_ip=127.0.0.2", PassdbReply(proxyFields=ProxyFields(sourceIP="127.0.0.2"))),
        (
            "forward_Tenant=acme forward_x=1",
            PassdbReply(proxyFields=ProxyFields(forward=(("tenant", "acme"), ("x", "1")))),
        ),
        (
            "host=192.0.2.7 hostip=192.0.2.7",
            PassdbReply(host="192.0.2.7", proxyFields=ProxyFields(hostip="192.0.2.7")),
        ),
        (
            "host=imap.example.com hostip=192.0.2.7",
            PassdbReply(host="imap.example.com", proxyFields=ProxyFields(hostip="192.0.2.7")),
        ),
        ("proxy_mech=XOAUTH2", PassdbReply(extra=(("proxy_mech", "XOAUTH2"),))),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_proxyFields(text, expected):
    assert reply(text) == expected


def test_proxyFieldsNullValuesAreAbsent():
    """SQL NULL (value None) for a value field means the field is absent."""
    fields = [(k, None) for k in ("hostip", "pass", "master", "proxy_timeout", "forward_x")]
    assert PassdbReply.fromFields(fields) == PassdbReply()


def test_proxyPasswordNotInRepr():
    assert "s3cret" not in repr(reply("proxy host=h pass=s3cret"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hostip=imap.example.com", "hostip='imap.example.com' is not an IP address"),
        ("source_ip=10.0.0.300", "source_ip='10.0.0.300' is not an IP address"),
        ("ssl=maybe", "ssl='maybe' is not one of yes, any-cert, no"),
        ("starttls=required", "starttls='required'"),
        ("proxy_timeout=soon", "proxy_timeout='soon' is not a time interval"),
        ("proxy_timeout=0", "proxy_timeout='0'"),
        ("proxy_timeout=5fortnights", "proxy_timeout='5fortnights'"),
        ("proxy_nopipelining=maybe", "proxy_nopipelining='maybe' is not a boolean"),
        ("proxy_maybe=sometimes", "proxy_maybe='sometimes' is not a boolean"),
        ("host=192.0.2.7 hostip=192.0.2.8", "are different addresses"),
    ],
    ids=lambda v: v if " is " not in v else "",
)
def test_badProxyFieldIsAnError(text, message):
    """Bad values fail, so passwd-file and static refuse them at start-up."""
    with pytest.raises(FieldError, match=re.escape(message)):
        reply(text)


@pytest.mark.parametrize("kind", ["static", "passwd-file"])
def test_passdbRefusesBadProxyFieldAtStartUp(tmp_path, kind):
    fields = "proxy host=imap2.example.com ssl=maybe"
    if kind == "passwd-file":
        (tmp_path / "users").write_text(f"alice:{{PLAIN}}x::::::{fields}\n")
        description = f"passwd-file:{tmp_path / 'users'}"
    else:
        description = f"static:{fields}"
    with pytest.raises(PassdbConfigError, match="ssl='maybe' is not one of yes, any-cert, no"):
        passdbFromString(description)
