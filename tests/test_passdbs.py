"""passwd-file and static passdbs, and passdbFromString."""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet import task

from imapreferral.login.context import LoginContext
from imapreferral.login.fields import PassdbReply
from imapreferral.passdbs import PassdbConfigError, passdbFromString
from imapreferral.passdbs.passwdfile import PasswdFilePassdb, parsePasswdLine

SEED = """\
# the seed's passwd-file example
refnl:{PLAIN}pass::::::host=imap2.example.com nologin

ref:{PLAIN}pass::::::host=imap2.example.com
fwd:::::::nopassword=y host=imap2.example.com nologin nodelay
"""


@pytest.fixture
def passwd(tmp_path):
    path = tmp_path / "users.passwd"
    path.write_text(SEED)
    return path


async def lookup(passdb, user):
    return await passdb.lookup(user, LoginContext())


@pytest_twisted.ensureDeferred
async def test_seedExample(passwd):
    passdb = passdbFromString(f"passwd-file:{passwd}")
    assert await lookup(passdb, "refnl") == PassdbReply(
        password="{PLAIN}pass", host="imap2.example.com", nologin=True
    )
    assert await lookup(passdb, "fwd") == PassdbReply(
        host="imap2.example.com", nologin=True, nopassword=True, nodelay=True
    )
    assert await lookup(passdb, "nobody") is None


def test_extraFieldsMayHoldColons():
    assert parsePasswdLine("u:p::::::host=2001:db8::1 nologin") == (
        "u",
        PassdbReply(password="p", host="2001:db8::1", nologin=True),
    )


def test_shortLineHasNoFields():
    assert parsePasswdLine("u:p") == ("u", PassdbReply(password="p"))


@pytest.mark.parametrize(
    "line",
    [
        "u:p:1000:1000:Jane Doe:/home/u:/bin/sh::host=imap2 nologin",
        "u:p:vmail:mail::/var/mail/u",  # names, as Dovecot's userdb resolves them
        "proxy:x:13:13:proxy:/bin:/usr/sbin/nologin",  # Debian's /etc/passwd line
        "u:{SSHA}X03MO1qnZdYdgyfeuILPmQ==::::",  # '=' in a hash
        "u:p:::Proxy user::",
        "u:",
    ],
    ids=[
        "full line",
        "uid and gid names",
        "etc passwd",
        "base64 hash",
        "gecos words",
        "no password",
    ],
)
def test_lineWithEveryColumnInPlaceIsAccepted(line):
    assert parsePasswdLine(line) is not None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("bad line without colons", "no ':' in the line"),
        (
            "short:{PLAIN}pw:host=10.0.0.1 nologin",
            "uid 'host=10.0.0.1 nologin' holds extra fields",
        ),
        ("u:pw:nologin", "uid 'nologin' holds extra fields"),
        ("u:pw:1000:proxy", "gid 'proxy' holds extra fields"),
        ("u:pw:1000:x y", "gid 'x y' is not a number or a group name"),
        ("u:pw:-1", "uid '-1' is not a number or a user name"),
        ("u:pw::::host=imap2 nologin", "home 'host=imap2 nologin' holds extra fields"),
        ("u:pw:::::nologin", "shell 'nologin' holds extra fields"),
        ("u:pw:::x userdb_mail=y", "gecos 'x userdb_mail=y' holds extra fields"),
        ("fwd:nopassword host=imap2 nologin", "the password column holds extra fields (host=...)"),
        ("fwd:nopassword", "the password column holds extra fields (nopassword...)"),
    ],
    ids=[
        "no colon",
        "fields in uid",
        "flag in uid",
        "flag in gid",
        "gid with a space",
        "negative uid",
        "fields in home",
        "flag in shell",
        "userdb field in gecos",
        "fields for a password",
        "flag for a password",
    ],
)
def test_lineThatLostAColonIsRefused(line, message):
    with pytest.raises(ValueError) as e:
        parsePasswdLine(line)
    assert str(e.value).startswith(message)


def test_refusalNeverShowsThePassword():
    with pytest.raises(ValueError) as e:
        parsePasswdLine("u:s3cret host=imap2")
    assert "s3cret" not in str(e.value)


@pytest.mark.parametrize("line", ["", "   ", "# comment", "  # indented comment"])
def test_blankAndCommentLinesSkipped(line):
    assert parsePasswdLine(line) is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("ok:p\n:nouser\n", ":2: empty user name"),
        ("a:p::::::port=http\n", ":1: port='http' is not a port number"),
        ("a:p::::::nologin=maybe\n", ":1: nologin='maybe' is not a boolean"),
        ("a:p\na:q\n", ":2: user 'a' is listed twice"),
        ("a:\xff\n", ":1: not valid UTF-8"),
    ],
)
def test_malformedFileNamesFileAndLine(tmp_path, content, message):
    path = tmp_path / "bad.passwd"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(PassdbConfigError) as e:
        passdbFromString(f"passwd-file:{path}")
    assert str(e.value).startswith(str(path) + message.split(" ")[0])
    assert message in str(e.value)


def test_missingFileIsClear(tmp_path):
    with pytest.raises(PassdbConfigError, match=r"nope\.passwd: cannot read passwd-file"):
        passdbFromString(f"passwd-file:{tmp_path}/nope.passwd")


@pytest_twisted.ensureDeferred
async def test_fileIsReReadWhenChanged(passwd):
    clock = task.Clock()
    passdb = PasswdFilePassdb(str(passwd), clock=clock)
    assert await lookup(passdb, "newuser") is None
    passwd.write_text(SEED + "newuser:{PLAIN}x::::::host=other.example.com nologin\n")
    os.utime(passwd, ns=(1, 1))  # a different mtime even within one clock tick
    assert await lookup(passdb, "newuser") is None  # looked at most once a second
    clock.advance(1)
    assert (await lookup(passdb, "newuser")).host == "other.example.com"


@pytest_twisted.ensureDeferred
async def test_brokenNewVersionKeepsLastGood(passwd):
    passdb = PasswdFilePassdb(str(passwd), recheck=0)
    passwd.write_text("refnl:p::::::port=bad\n")
    os.utime(passwd, ns=(2, 2))
    assert (await lookup(passdb, "refnl")).host == "imap2.example.com"


@pytest_twisted.ensureDeferred
async def test_staticPassdb():
    passdb = passdbFromString("static:host=imap2.example.com nologin nopassword nodelay")
    assert await lookup(passdb, "anyone") == PassdbReply(
        host="imap2.example.com", nologin=True, nopassword=True, nodelay=True
    )


@pytest.mark.parametrize(
    "description",
    ["static:password=s3cret port=x", "static:host=h PASSWORD={PLAIN}s3cret nologin=maybe"],
    ids=["password=", "PASSWORD= with a scheme"],
)
def test_staticPasswordIsNotShownInErrors(description):
    """The error names the option, as given but for the password (stderr ends up in logs)."""
    with pytest.raises(PassdbConfigError) as e:
        passdbFromString(description)
    assert "s3cret" not in str(e.value)
    assert "password=***" in str(e.value).lower()


def test_staticProxyPassIsNotShownInErrors():
    """A static proxy's backend password (pass=) is a secret too."""
    with pytest.raises(PassdbConfigError) as e:
        passdbFromString("static:nopassword proxy host=h pass=s3cret port=x")
    assert "s3cret" not in str(e.value) and "pass=***" in str(e.value)


def test_staticWithBadFieldIsClear():
    with pytest.raises(PassdbConfigError, match="port='x'"):
        passdbFromString("static:host=h port=x")


@pytest.mark.parametrize("text", ["nosuch:x", "passwd-file", "", "passwd-file:"])
def test_badPassdbDescription(text):
    with pytest.raises(PassdbConfigError):
        passdbFromString(text)


def test_bundledSQLiteMatchesItsScript():
    import sqlite3
    from pathlib import Path

    examples = Path(__file__).parent.parent / "imapreferral" / "examples"
    fresh = sqlite3.connect(":memory:")
    fresh.executescript((examples / "users.sql").read_text())
    bundled = sqlite3.connect(f"file:{examples / 'users.sqlite'}?mode=ro", uri=True)
    try:
        assert list(bundled.iterdump()) == list(fresh.iterdump())
    finally:
        bundled.close()
        fresh.close()
