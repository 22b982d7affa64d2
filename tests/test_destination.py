"""From a C{proxy} passdb reply to a ProxyDestination: Dovecot's defaults."""

from __future__ import annotations

import pytest

from imapreferral.login.destination import proxyDestination
from imapreferral.login.fields import PassdbReply, splitExtraFields
from imapreferral.login.outcome import (
    IMPLICIT_TLS,
    STARTTLS,
    ProxyDestination,
    Unavailable,
)


def destination(fields: str, password: str | None = "clientpw"):
    reply = PassdbReply.fromFields(splitExtraFields(fields))
    return proxyDestination(reply, "alice", password)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            "proxy host=imap2.example.com",
            ProxyDestination(host="imap2.example.com", port=143, user="alice", password="clientpw"),
        ),
        (
            "proxy host=imap2.example.com ssl=yes",
            ProxyDestination(
                host="imap2.example.com", port=993, user="alice", password="clientpw",
                tls=IMPLICIT_TLS,
            ),
        ),
        (
            "proxy host=imap2.example.com ssl=any-cert port=1993",
            ProxyDestination(
                host="imap2.example.com", port=1993, user="alice", password="clientpw",
                tls=IMPLICIT_TLS, verifyCertificate=False,
            ),
        ),
        (
            "proxy host=imap2.example.com ssl=yes starttls=yes",
            ProxyDestination(
                host="imap2.example.com", port=143, user="alice", password="clientpw",
                tls=STARTTLS,
            ),
        ),
        (
            "proxy host=imap2.example.com starttls=any-cert",
            ProxyDestination(
                host="imap2.example.com", port=143, user="alice", password="clientpw",
                tls=STARTTLS, verifyCertificate=False,
            ),
        ),
        (
            "proxy host=[2001:db8::1] pass=backendpw master=admin proxy_timeout=5 "
            "proxy_nopipelining proxy_not_trusted source_ip=127.0.0.2 hostip=2001:db8::1 "
            "forward_tenant=acme",
            ProxyDestination(
                host="2001:db8::1", port=143, user="alice", password="backendpw",
                master="admin", hostip="2001:db8::1", timeout=5.0, pipelining=False,
                sendID=False, sourceIP="127.0.0.2", forward=(("tenant", "acme"),),
            ),
        ),
    ],
    ids=["defaults", "ssl-993", "any-cert", "starttls-wins", "starttls-any-cert", "all"],
)  # fmt: skip
def test_destination(fields, expected):
    assert destination(fields) == expected


@pytest.mark.parametrize(
    ("fields", "password", "why"),
    [
        ("proxy", "pw", "proxy: host field not given"),
        ("proxy host=", "pw", "proxy: host field not given"),
        ("proxy host=h", None, "proxy: pass field is missing"),
    ],
    ids=["no-host", "empty-host", "cram-md5-without-pass"],
)
def test_noDestination(fields, password, why):
    result = destination(fields, password)
    assert isinstance(result, Unavailable) and result.why.startswith(why)


def test_passFieldServesCramMD5():
    assert destination("proxy host=h pass=backendpw", None).password == "backendpw"


def test_addressForLogs():
    assert destination("proxy host=2001:db8::1 port=1143").address == "[2001:db8::1]:1143"
    assert destination("proxy host=imap2.example.com").address == "imap2.example.com:143"


def test_passwordNotInRepr():
    assert "clientpw" not in repr(destination("proxy host=h"))
