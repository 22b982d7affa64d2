"""The README's embedding example runs as written: a checker of one's own refers."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest_twisted
from twisted.cred.portal import Portal

from imapreferral import ReferralRealm, ReferralServerFactory
from imapreferral.testing import ServerHarness

EXAMPLE = Path(__file__).parent.parent / "examples" / "embed.py"


def test_readmeQuotesTheExample():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert EXAMPLE.read_text().strip() in readme


@pytest_twisted.ensureDeferred
async def test_ownCheckerRefersThroughPublicInterface(clock):
    example = runpy.run_path(str(EXAMPLE), run_name="example")
    checker = example["MigrationChecker"]({b"alice": b"secret", b"bob": b"secret"}, {b"bob"})
    harness = ServerHarness(ReferralServerFactory(Portal(ReferralRealm(), [checker]), clock=clock))
    async with harness.serving() as client:
        assert await client.command(b"a LOGIN bob secret") == [
            b"a NO [REFERRAL imap://bob;AUTH=PLAIN@imap2.example.com/] Try this server instead."
        ]
        assert (await client.command(b"b LOGIN alice secret"))[-1].startswith(b"b OK [CAPABILITY ")
        assert b"CRAM-MD5" not in client.greeting  # that checker takes no hashed credentials


@pytest_twisted.ensureDeferred
async def test_ownCheckerAvatarIdSuggestsReferral(clock):
    from twisted.internet.defer import succeed

    from imapreferral import AvatarId, Referral

    class Suggesting:
        credentialInterfaces = ReferralServerFactory.__init__.__defaults__ and ()

        def requestAvatarId(self, credentials):
            return succeed(
                AvatarId("carol", Referral("carol", "imap2.example.com", 993, "Please move"))
            )

    from twisted.cred.credentials import IUsernamePassword

    Suggesting.credentialInterfaces = (IUsernamePassword,)
    harness = ServerHarness.forChecker(Suggesting(), clock=clock)
    async with harness.serving() as client:
        assert await client.command(b"a LOGIN carol x") == [
            b"a OK [REFERRAL imap://carol;AUTH=PLAIN@imap2.example.com:993/] Please move"
        ]
        assert await client.command(b"n NAMESPACE") != []


def test_exampleServiceBuilds():
    example = runpy.run_path(str(EXAMPLE), run_name="example")
    svc = example["makeReferralService"]("tcp:0:interface=127.0.0.1")
    assert svc is not None
