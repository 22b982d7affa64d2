"""
Real IMAP clients against the real server over loopback: Python's imaplib,
imapclient and Twisted's IMAP4Client. The blocking clients run in a thread.
"""

from __future__ import annotations

import imaplib

import imapclient
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.threads import deferToThread
from twisted.mail.imap4 import IMAP4Client, IMAP4Exception

REFNL_URL = b"imap://refnl;AUTH=PLAIN@imap2.example.com/"


def _imaplibLogin(port: int, user: str, password: str):
    conn = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    try:
        try:
            result = conn.login(user, password)
            error = None
        except imaplib.IMAP4.error as e:
            result, error = None, e
        return result, error, conn.state, conn.response("REFERRAL"), conn.capabilities
    finally:
        conn.logout()


@pytest_twisted.ensureDeferred
async def test_imaplibSeesNoReferral(server):
    result, error, state, referral, caps = await deferToThread(
        _imaplibLogin, server.port, "refnl", "pass"
    )
    assert result is None
    assert error.args[0] == b"[REFERRAL " + REFNL_URL + b"] Try this server instead."
    assert state == "NONAUTH"
    assert referral == ("REFERRAL", [REFNL_URL])
    assert "LOGIN-REFERRALS" in caps


@pytest_twisted.ensureDeferred
async def test_imaplibOkReferralLogsIn(server):
    result, error, state, referral, _ = await deferToThread(
        _imaplibLogin, server.port, "ref", "pass"
    )
    assert error is None
    assert result == (
        "OK",
        [
            b"[REFERRAL imap://ref;AUTH=PLAIN@imap2.example.com/] Logged in, but you should use this server instead."
        ],
    )
    assert state == "AUTH"
    assert referral == ("REFERRAL", [b"imap://ref;AUTH=PLAIN@imap2.example.com/"])


@pytest_twisted.ensureDeferred
async def test_imaplibPlainUserLogsIn(server):
    result, error, state, _, _ = await deferToThread(_imaplibLogin, server.port, "plain", "pass")
    assert error is None and result[0] == "OK" and state == "AUTH"


def _imaplibAuthenticatePlain(port: int, user: str, password: str):
    conn = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    try:
        try:
            conn.authenticate("PLAIN", lambda _: f"\0{user}\0{password}".encode())
        except imaplib.IMAP4.error as e:
            return str(e), conn.response("REFERRAL")
        return None, None
    finally:
        conn.logout()


@pytest_twisted.ensureDeferred
async def test_imaplibAuthenticatePlainSeesReferral(server):
    error, referral = await deferToThread(_imaplibAuthenticatePlain, server.port, "refnl", "pass")
    assert (
        error == "[REFERRAL imap://refnl;AUTH=PLAIN@imap2.example.com/] Try this server instead."
    )
    assert referral == ("REFERRAL", [REFNL_URL])


def _imapclientLogin(port: int, user: str, password: str):
    client = imapclient.IMAPClient("127.0.0.1", port=port, ssl=False, timeout=10)
    try:
        try:
            client.plain_login(user, password)
        except imapclient.exceptions.LoginError as e:
            return str(e), client._imap.untagged_responses.get("REFERRAL")
        return None, None
    finally:
        client.logout()


@pytest_twisted.ensureDeferred
async def test_imapclientPlainLoginSeesReferral(server):
    error, referral = await deferToThread(_imapclientLogin, server.port, "refnl", "pass")
    assert (
        error == "[REFERRAL imap://refnl;AUTH=PLAIN@imap2.example.com/] Try this server instead."
    )
    assert referral == [REFNL_URL]


async def _twistedClient(port: int) -> IMAP4Client:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    client = await endpoint.connect(Factory.forProtocol(IMAP4Client))
    return client


@pytest_twisted.ensureDeferred
async def test_twistedIMAP4ClientLoginReferral(server):
    client = await _twistedClient(server.port)
    try:
        with pytest.raises(IMAP4Exception) as e:
            await client.login(b"refnl", b"pass")
        assert e.value.args[0] == b"[REFERRAL " + REFNL_URL + b"] Try this server instead."
    finally:
        await client.logout()


@pytest_twisted.ensureDeferred
async def test_twistedIMAP4ClientOkReferral(server):
    client = await _twistedClient(server.port)
    try:
        await client.login(b"ref", b"pass")
        caps = await client.getCapabilities(useCache=False)
        assert b"LOGIN-REFERRALS" in caps
    finally:
        await client.logout()
