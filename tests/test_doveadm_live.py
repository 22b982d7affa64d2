"""
Dovecot's own C{doveadm pw}, run now: fresh hashes of every scheme verify
(wrong passwords don't), and C{doveadm pw -t} agrees with us on each row of
L{test_passwords.DECODING}. Skipped where doveadm is missing; CI installs
Debian's C{dovecot-core}.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import pytest_twisted
from test_passwords import DECODING, PW

from imapreferral import passwords
from imapreferral.passwords import SchemeVerifier

DOVEADM = shutil.which("doveadm")
if DOVEADM is None and os.environ.get("IMAPREFERRAL_REQUIRE_DOVEADM"):
    raise RuntimeError("doveadm is required (apt-get install dovecot-core) but not on PATH")
pytestmark = pytest.mark.skipif(
    DOVEADM is None, reason="doveadm not on PATH (Debian/Ubuntu: apt-get install dovecot-core)"
)

SCHEMES = [*sorted(passwords._SCHEMES), "SHA256.HEX", "PLAIN.B64", "SSHA512.HEX", "CRAM-MD5.B64"]


def doveadm(*args: str) -> subprocess.CompletedProcess[str]:
    """
    C{-O}: read no dovecot.conf. C{pw} needs none, and without it doveadm
    works where /etc/dovecot is absent or unreadable.
    """
    assert DOVEADM is not None
    return subprocess.run(
        [DOVEADM, "-O", "pw", *args], capture_output=True, text=True, timeout=30, check=False
    )


@pytest.fixture(scope="module")
def fresh() -> dict[str, str]:
    """One doveadm hash of C{PW} per scheme, made once for the module."""
    made = {}
    for scheme in SCHEMES:
        done = doveadm("-s", scheme, "-p", PW.decode())
        assert done.returncode == 0, done.stderr
        made[scheme] = done.stdout.strip()
    return made


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest_twisted.ensureDeferred
async def test_freshHash(fresh: dict[str, str], scheme: str) -> None:
    verifier = SchemeVerifier()
    try:
        assert await verifier.verify(fresh[scheme], PW) is True
        assert await verifier.verify(fresh[scheme], b"x" + PW) is False
    finally:
        await verifier.stopService()


@pytest.mark.parametrize(("stored", "expected"), DECODING, ids=[r[0][:24] for r in DECODING])
def test_doveadmAgrees(stored: str, expected: object) -> None:
    """Rows we accept, doveadm verifies; rows we refuse, it refuses too."""
    done = doveadm("-t", stored, "-p", PW.decode())
    assert (done.returncode == 0) is (expected is True), done.stderr
