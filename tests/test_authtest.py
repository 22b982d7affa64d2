"""
What C{imapreferral auth test} prints about a passdb reply
(L{imapreferral.authtest.replyFields}): Dovecot's field names, passwords
redacted, and nothing lost (fields without secrets parse back to the same
reply).
"""

from __future__ import annotations

import attrs
import pytest
from conftest import exampleUsers

from imapreferral.authtest import formatFields, replyFields
from imapreferral.login.fields import PassdbReply, splitExtraFields

ROWS = [
    # passwd-file extra fields -> what is shown
    ("host=imap2.example.com nologin", "host=imap2.example.com nologin"),
    # a bare flag and its =y spelling read the same
    ("nopassword=y host=imap2.example.com nodelay", "host=imap2.example.com nopassword nodelay"),
    # port and destuser
    ("host=h port=1143 destuser=moved@example.com", "host=h port=1143 destuser=moved@example.com"),
    # the stored password: its scheme only
    ("password={BLF-CRYPT}$2y$05$abcdefghijklmnopqrstuv", "password={BLF-CRYPT}***"),
    # a password with no scheme: nothing of it
    ("password=secret", "password=***"),
    # the proxy password: that it is there
    ("proxy host=b.example.com pass=backend-secret", "host=b.example.com proxy pass=***"),
    # proxy fields under Dovecot's names
    (
        "proxy_maybe host=10.0.0.2 hostip=10.0.0.2 ssl=any-cert proxy_timeout=5 "
        "proxy_nopipelining proxy_not_trusted source_ip=10.0.0.1 master=admin",
        "host=10.0.0.2 proxy_maybe hostip=10.0.0.2 master=admin ssl=any-cert "
        "proxy_timeout=5 proxy_nopipelining proxy_not_trusted source_ip=10.0.0.1",
    ),
    # forward_ fields, and a field we do not know, kept
    ("forward_x=1 quota=2G", "forward_x=1 quota=2G"),
    # userdb_ fields belong to the userdb and are dropped on reading
    ("userdb_home=/x nologin", "nologin"),
]


@pytest.mark.parametrize(("given", "shown"), ROWS, ids=[r[0][:30] for r in ROWS])
def test_replyFieldsAsDovecotWritesThem(given, shown):
    reply = PassdbReply.fromFields(splitExtraFields(given))
    assert formatFields(replyFields(reply)) == shown


def test_noSecretShown():
    reply = PassdbReply.fromFields(
        splitExtraFields("password={PLAIN}hunter2 proxy host=b pass=letmein")
    )
    text = formatFields(replyFields(reply))
    assert "hunter2" not in text and "letmein" not in text


@pytest.mark.parametrize("user", sorted(exampleUsers()))
def test_fieldsWithoutSecretsParseBackToTheSameReply(user):
    reply = attrs.evolve(exampleUsers()[user], password=None)
    assert PassdbReply.fromFields(replyFields(reply)) == reply
