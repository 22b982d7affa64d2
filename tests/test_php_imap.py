"""
PHP's imap extension (Debian's C{php-imap}), a c-client program that does
NOT follow login referrals, against our server in front of a real
Dovecot. c-client follows a referral only when the program registers a
referral callback (C{mail_parameters(NIL, SET_IMAPREFERRAL, ...)} in
C{imap4r1.c}'s C{imap_open}); Alpine and Pine do, PHP does not. Its tags
are c-client's (C{%08lx}), so it is recognised as C{c-client}.

Review of issue 9: both tests fail. Without C{php} and its C{imap}
extension they are skipped, unless C{IMAPREFERRAL_REQUIRE_PHP} is set.
"""

from __future__ import annotations

import os
import subprocess

import pytest
import pytest_twisted
from dovecotbackend import startDovecot
from haproxyserver import requireExecutable
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from imapreferral.proxy.connect import BackendConnector
from imapreferral.testing import MemoryPassdb, ServerHarness

#: Open alice's INBOX with imap_open() and print message 1's subject, or
#: FAILED and c-client's errors.
_SCRIPT = r"""
$m = @imap_open("{127.0.0.1:" . $argv[1] . "/imap/notls}INBOX", "alice", "secret", 0, 1);
if ($m) { echo "SUBJECT ", imap_headerinfo($m, 1)->subject, "\n"; imap_close($m); }
else { echo "FAILED ", implode(" | ", imap_errors() ?: []), "\n"; }
"""


def phpWithImap() -> str:
    """C{php} with the imap extension; skip (or fail, if required) without."""
    php = requireExecutable("php", "php-cli php-imap")
    modules = subprocess.run([php, "-m"], capture_output=True, text=True, check=True).stdout
    if "imap" not in modules.split():
        why = "php has no imap extension (Debian: apt-get install php-imap)"
        if os.environ.get("IMAPREFERRAL_REQUIRE_PHP"):
            pytest.fail(f"{why} and IMAPREFERRAL_REQUIRE_PHP is set")
        pytest.skip(why)
    return php


def phpOpensInbox(php: str, port: int) -> str:
    """What PHP's imap_open() of alice's INBOX on C{port} printed (blocking)."""
    done = subprocess.run(
        [php, "-r", _SCRIPT, str(port)], capture_output=True, text=True, timeout=60
    )
    return done.stdout.strip()


@pytest.fixture(scope="module")
def dovecot():
    phpWithImap()
    backend = startDovecot()
    yield backend
    backend.stop()


async def phpAgainst(dovecot, clock, mode: str, **policy: object) -> str:
    """PHP opening alice's INBOX through our server in C{mode} (default mechanisms)."""
    passdb = MemoryPassdb.fromLines(
        {"alice": ("{PLAIN}secret", f"host=127.0.0.1 port={dovecot.port} nologin")}
    )
    harness = ServerHarness.forPassdbs(
        [passdb],
        clock=clock,
        referralMode=mode,
        connector=BackendConnector(reactor, clock),
        **policy,
    )
    await harness.start()
    try:
        return await deferToThread(phpOpensInbox, phpWithImap(), harness.port)
    finally:
        await harness.stop()


@pytest_twisted.ensureDeferred
async def test_phpInProxyModeReadsItsMailbox(dovecot, clock):
    """
    C{--referral-mode proxy} is "nobody gets the referral". c-client tries
    CRAM-MD5 first when it is offered (our default with a plaintext
    passdb); a CRAM-MD5 login is referred instead of proxied, and PHP
    stops at "[CLOSED] IMAP connection broken (authenticate)".
    """
    assert await phpAgainst(dovecot, clock, "proxy") == "SUBJECT marker-alice"


@pytest_twisted.ensureDeferred
async def test_phpInAutoModeReadsItsMailbox(dovecot, clock):
    """
    C{--referral-mode auto}: "recognised referral followers get the
    referral; every other client is proxied". PHP does not follow
    referrals, yet its c-client tags make it a "follower": it gets the
    C{BYE} form and fails. Tags say c-client, not "follows referrals":
    an admin with PHP users takes c-client out of the followers.
    """
    reply = await phpAgainst(dovecot, clock, "auto", referralClientNames=("alpine", "pine"))
    assert reply == "SUBJECT marker-alice"
