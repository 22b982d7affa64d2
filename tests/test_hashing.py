"""
C{imapreferral pw}'s hashes (L{imapreferral.hashing}): every scheme we
make, we verify, and Dovecot's C{doveadm pw -t} verifies too.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import pytest_twisted

from imapreferral import passwords
from imapreferral.hashing import DEFAULT_SCHEME, SCHEMES, makePassword
from imapreferral.passwords import SchemeVerifier, UnknownScheme

#: Non-ASCII, a space and a colon (the passwd-file separator).
PW = "pä ss:wörd".encode()

DOVEADM = shutil.which("doveadm")


@pytest.fixture(scope="module")
def made() -> dict[str, str]:
    """One stored password of C{PW} per scheme, made once for the module."""
    return {scheme: makePassword(PW, scheme) for scheme in SCHEMES}


def test_weMakeEverySchemeWeVerify():
    assert set(SCHEMES) == set(passwords._SCHEMES)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_madePasswordNamesItsScheme(made, scheme):
    assert made[scheme].startswith("{" + scheme + "}")


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest_twisted.ensureDeferred
async def test_madePasswordVerifies(made, scheme):
    verifier = SchemeVerifier()
    try:
        assert await verifier.verify(made[scheme], PW) is True
        # "x" in front: DES-CRYPT reads only the first 8 bytes.
        assert await verifier.verify(made[scheme], b"x" + PW) is False
    finally:
        await verifier.stopService()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_doveadmVerifiesMadePassword(made, scheme):
    if DOVEADM is None:
        if os.environ.get("IMAPREFERRAL_REQUIRE_DOVEADM"):
            pytest.fail("doveadm is required (apt-get install dovecot-core) but not on PATH")
        pytest.skip("doveadm not on PATH (Debian/Ubuntu: apt-get install dovecot-core)")
    for password, verified in ((PW, True), (b"x" + PW, False)):
        done = subprocess.run(
            [DOVEADM, "-O", "pw", "-t", made[scheme], "-p", password.decode()],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert (done.returncode == 0) is verified, done.stderr


def test_defaultIsBcrypt():
    assert makePassword(PW).startswith("{BLF-CRYPT}$2b$10$")
    assert DEFAULT_SCHEME == "BLF-CRYPT"


def test_saltedSchemesDifferEachTime():
    assert makePassword(PW, "SSHA512") != makePassword(PW, "SSHA512")


def test_unknownSchemeIsRefused():
    with pytest.raises(UnknownScheme, match=r"cannot make \{NOSUCH\} passwords"):
        makePassword(PW, "NOSUCH")


def test_cryptSchemeRefusesANulByte():
    """crypt(3) takes a C string: Dovecot could never check it."""
    with pytest.raises(ValueError, match="NUL byte"):
        makePassword(b"a\0b", "SHA512-CRYPT")
