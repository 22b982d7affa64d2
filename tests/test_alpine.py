"""
Alpine, the one client we know that follows login referrals, against our
server in front of a real Dovecot: c-client's one-prompt referral form on
the AUTHENTICATE path (C{* BYE [REFERRAL]}, the tagged C{NO}, close).
Alpine retries each advertised SASL mechanism three times before it
follows a plain tagged C{NO [REFERRAL]}; after the C{BYE} it gives up on
this server, trying the next mechanism only on a closed connection.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from alpineclient import alpineExecutables, runAlpine
from dovecotbackend import startDovecot
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from imapreferral.proxy.connect import BackendConnector
from imapreferral.testing import MemoryPassdb, ServerHarness


@pytest.fixture(scope="module")
def dovecot():
    alpineExecutables()
    backend = startDovecot()
    yield backend
    backend.stop()


@pytest_twisted.ensureDeferred
async def test_alpineFollowsTheByeReferralAfterOnePrompt(dovecot, clock, tmp_path):
    """
    With PLAIN advertised (c-client leaves LOGIN out when PLAIN is there):
    one password prompt here, one at the target. Measured by hand: with
    CRAM-MD5 advertised too it is two here (CRAM-MD5, then PLAIN on the
    closed connection), where the tagged C{NO} alone took six.
    """
    passdb = MemoryPassdb.fromLines(
        {"alice": ("{PLAIN}secret", f"host=127.0.0.1 port={dovecot.port} nologin")}
    )
    harness = ServerHarness.forPassdbs(
        [passdb],
        clock=clock,
        mechanisms=["PLAIN", "LOGIN"],
        connector=BackendConnector(reactor, clock),
    )
    await harness.start()
    try:
        run = await deferToThread(
            runAlpine,
            tmp_path,
            f"{{127.0.0.1:{harness.port}/user=alice/notls}}INBOX",
            "secret",
            opened="marker-alice",
        )
    finally:
        await harness.stop()
    front, target = str(harness.port), str(dovecot.port)
    assert [p.rpartition(":")[2] for p in run.prompts] == [front, target]
    assert "marker-alice" in run.screen  # Dovecot's INBOX
    referral = f"[REFERRAL imap://alice;AUTH=PLAIN@127.0.0.1:{dovecot.port}/]"
    bye = run.transcript.index(f"* BYE {referral} Try this server instead.")
    assert run.transcript[bye + 1] == f"00000000 NO {referral} Try this server instead."
