"""
The wire table of the core issue, byte for byte, for every mechanism.

Each test logs in once over a real loopback connection and asserts the
tagged reply exactly.
"""

from __future__ import annotations

import hashlib
import hmac
from base64 import b64decode, b64encode

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from wiretable import CRAM_MD5_ROWS, FAILED, REFER, REFERRAL_ROWS

from imapreferral.testing import waitForDelay


def plainIR(user: bytes, password: bytes) -> bytes:
    return b64encode(b"\0" + user + b"\0" + password)


async def loginLOGIN(client, user, password):
    return (await client.command(b"a LOGIN " + user + b" " + password))[-1]


async def loginPLAIN_IR(client, user, password):
    return (await client.command(b"a AUTHENTICATE PLAIN " + plainIR(user, password)))[-1]


async def loginPLAIN(client, user, password):
    assert await client.command(b"a AUTHENTICATE PLAIN") == [b"+ "]
    return (await client.command(plainIR(user, password), b"a"))[-1]


async def loginLOGINMECH(client, user, password):
    assert await client.command(b"a AUTHENTICATE LOGIN") == [b"+ VXNlcm5hbWU6"]
    assert await client.command(b64encode(user), b"a") == [b"+ UGFzc3dvcmQ6"]
    return (await client.command(b64encode(password), b"a"))[-1]


async def loginCRAM(client, user, password):
    (challengeLine,) = await client.command(b"a AUTHENTICATE CRAM-MD5")
    challenge = b64decode(challengeLine[2:])
    digest = hmac.new(password, challenge, hashlib.md5).hexdigest().encode()
    return (await client.command(b64encode(user + b" " + digest), b"a"))[-1]


MECHS = {
    "LOGIN": ("PLAIN", loginLOGIN),
    "PLAIN-IR": ("PLAIN", loginPLAIN_IR),
    "PLAIN": ("PLAIN", loginPLAIN),
    "AUTH-LOGIN": ("LOGIN", loginLOGINMECH),
    "CRAM-MD5": ("CRAM-MD5", loginCRAM),
}


def _expected(template: bytes, mech: str) -> bytes:
    return b"a " + template.replace(b"{mech}", mech.encode())


@pytest.mark.parametrize("mech", MECHS)
@pytest.mark.parametrize("row", REFERRAL_ROWS)
@pytest_twisted.ensureDeferred
async def test_rightPasswordGivesTableReply(client, row, mech):
    user, template = REFERRAL_ROWS[row]
    if mech == "CRAM-MD5":
        template = CRAM_MD5_ROWS.get(row, template)
    authName, login = MECHS[mech]
    assert await login(client, user, b"pass") == _expected(template, authName)


@pytest.mark.parametrize("mech", MECHS)
@pytest_twisted.ensureDeferred
async def test_plainUserLogsInWithCapabilities(client, mech):
    _authName, login = MECHS[mech]
    assert await login(client, b"plain", b"pass") == (
        b"a OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID NAMESPACE IDLE] Logged in"
    )
    assert await client.command(b"s SELECT INBOX") == [b"s NO No such mailbox"]


@pytest.mark.parametrize("mech", [m for m in MECHS if m != "CRAM-MD5"])
@pytest_twisted.ensureDeferred
async def test_nopasswordRefersWithAnyPassword(client, mech):
    _, login = MECHS[mech]
    reply = await login(client, b"fwdd", b"anything")
    assert reply == b"a NO [REFERRAL imap://fwdd;AUTH=%s@imap2.example.com/] %s" % (
        MECHS[mech][0].encode(),
        REFER,
    )


@pytest_twisted.ensureDeferred
async def test_nopasswordRefersWithEmptyPassword(client):
    assert (await client.command(b'a LOGIN fwd ""'))[-1] == (
        b"a NO [REFERRAL imap://fwd;AUTH=PLAIN@imap2.example.com/] " + REFER
    )


@pytest.mark.parametrize("mech", MECHS)
@pytest.mark.parametrize("user", [b"refnl", b"ref", b"plain", b"nosuchuser", b"nl", b"prox"])
@pytest_twisted.ensureDeferred
async def test_wrongPasswordRevealsNothingAfterDelay(client, clock, mech, user):
    _, login = MECHS[mech]
    reply = Deferred.fromCoroutine(login(client, user, b"wrong"))
    await waitForDelay(clock, 2.0)
    assert not reply.called
    clock.advance(2.0)
    assert await reply == b"a " + FAILED


@pytest_twisted.ensureDeferred
async def test_referralIsNotDelayed(client, clock):
    reply = await client.command(b"a LOGIN refnl pass")
    assert reply[-1].startswith(b"a NO [REFERRAL ")
    assert all(dc.getTime() != 2.0 for dc in clock.getDelayedCalls())
