"""Dovecot SQL config parsing and password_query compilation: tables, no database."""

from __future__ import annotations

import pytest

from imapreferral.login.context import LoginContext
from imapreferral.passdbs.sqlconf import (
    SQLConfigError,
    compileQuery,
    parseSQLConfig,
    redactConninfo,
    redactSecrets,
)

CTX = LoginContext(remoteIP="192.0.2.7", remotePort=5555, localIP="127.0.0.1", localPort=143)

COMPILE = [
    # (query, sql with ?, parameters for user "Bob@Example.com")
    ("WHERE userid = '%u'", "WHERE userid = ?", ("Bob@Example.com",)),  # quoted alone: parameter
    ("WHERE userid = %u", "WHERE userid = ?", ("Bob@Example.com",)),  # unquoted: parameter too
    ("WHERE u = '%Lu'", "WHERE u = ?", ("bob@example.com",)),  # lower-case modifier
    ("WHERE u = '%Uu'", "WHERE u = ?", ("BOB@EXAMPLE.COM",)),  # upper-case modifier
    ("WHERE n = '%n' AND d = '%d'", "WHERE n = ? AND d = ?", ("Bob", "Example.com")),
    ("WHERE u = '%n@%d'", "WHERE u = (? || '@' || ?)", ("Bob", "Example.com")),  # mixed literal
    (
        "WHERE ip = '%r' AND l = '%l' AND s = '%s'",
        "WHERE ip = ? AND l = ? AND s = ?",
        ("192.0.2.7", "127.0.0.1", "imap"),
    ),
    (
        "WHERE u = '%{user}' AND n = '%L{username}'",
        "WHERE u = ? AND n = ?",
        ("Bob@Example.com", "bob"),
    ),
    ("WHERE p = '%{rport}:%{lport}'", "WHERE p = (? || ':' || ?)", ("5555", "143")),
    ("WHERE x LIKE '100%%'", "WHERE x LIKE '100%'", ()),  # %% is a literal percent
    (
        "SELECT 'it''s' AS reason FROM t WHERE u = '%u'",
        "SELECT 'it''s' AS reason FROM t WHERE u = ?",
        ("Bob@Example.com",),
    ),
    ('SELECT "weird""col" FROM t', 'SELECT "weird""col" FROM t', ()),
]


@pytest.mark.parametrize(("query", "sql", "params"), COMPILE)
def test_compileQuery(query, sql, params):
    compiled = compileQuery(query, "?")
    assert compiled.sql == sql
    assert compiled.parameters("Bob@Example.com", CTX) == params


def test_compileForPostgresEscapesPercentAndCasts():
    compiled = compileQuery("WHERE u = '%n@%d' AND x LIKE 'a%%'", "%s", "CAST({} AS text)")
    assert (
        compiled.sql == "WHERE u = (CAST(%s AS text) || '@' || CAST(%s AS text)) AND x LIKE 'a%%'"
    )


@pytest.mark.parametrize(
    "query", ["WHERE u = '%x'", "WHERE u = '%{nosuch}'", "WHERE u = 'open", "50% off"]
)
def test_badQueryIsRefused(query):
    with pytest.raises(ValueError):
        compileQuery(query, "?")


def test_parseWithContinuationsCommentsAndQuotes():
    config = parseSQLConfig(
        "/etc/d.conf",
        "# comment\n\ndriver = pgsql\n"
        'connect = "host=127.0.0.1 dbname=mail"\n'
        "default_pass_scheme = sha512-crypt\n"
        "user_query = SELECT 1\n"
        "password_query = SELECT password \\\n    FROM users \\\n    WHERE userid = '%u'\n",
    )
    assert config.driver == "pgsql"
    assert config.connect == "host=127.0.0.1 dbname=mail"
    assert config.defaultPassScheme == "SHA512-CRYPT"
    assert config.passwordQuery == "SELECT password FROM users WHERE userid = '%u'"
    assert config.queryLine == 7
    assert config.ignored == ("user_query",)


def test_defaultSchemeIsDovecotsMD5():
    config = parseSQLConfig("f", "driver = sqlite\nconnect = x\npassword_query = SELECT 1\n")
    assert config.defaultPassScheme == "MD5"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "driver = mysql\nconnect = x\npassword_query = SELECT 1\n",
            "f:1: driver 'mysql' is not supported",
        ),
        ("driver = sqlite\npassword_query = SELECT 1\n", "f: missing 'connect = ...'"),
        ("driver = sqlite\nconnect = x\n", "f: missing 'password_query = ...'"),
        ("driver = sqlite\nthis is not a setting\n", "f:2: expected 'key = value'"),
        (
            "driver = sqlite\nconnect = x\npassword_query = SELECT '%q'\n",
            "f:3: password_query: unknown variable %q",
        ),
    ],
)
def test_badConfigNamesFileAndLine(text, message):
    with pytest.raises(SQLConfigError) as e:
        parseSQLConfig("f", text)
    assert str(e.value).startswith(message)


def test_trailingCommentsAndCommentsInsideContinuations():
    config = parseSQLConfig(
        "f",
        "driver = sqlite # the driver\n"
        'connect = "/var/lib/my # db"  # quoted: the # stays\n'
        "password_query = SELECT password, host \\\n"
        "  # a note in the middle\n"
        "\n"
        "  FROM users WHERE userid = '%u'\n",
    )
    assert config.driver == "sqlite"
    assert config.connect == "/var/lib/my # db"
    assert config.passwordQuery == "SELECT password, host FROM users WHERE userid = '%u'"


def test_singleQuotedValue():
    config = parseSQLConfig("f", "driver = 'sqlite'\nconnect = 'x'\npassword_query = SELECT 1\n")
    assert (config.driver, config.connect) == ("sqlite", "x")


def test_sqlCommentsAreDropped():
    compiled = compileQuery("SELECT 1 /* it's '%x' */ FROM t WHERE u = '%u' -- don't", "?")
    assert compiled.sql == "SELECT 1   FROM t WHERE u = ?  "
    assert len(compiled.variables) == 1


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("'%a:%b'", ("143", "5555")),  # a concatenation of two parameters
        ("'%m' '%c'", ("CRAM-MD5", "secured")),
        ("'%{real_rip}' '%{orig_user}'", ("192.0.2.7", "Bob@Example.com")),
    ],
)
def test_moreDovecotVariables(query, expected):
    import attrs

    context = attrs.evolve(CTX, mechanism="CRAM-MD5", secured=True)
    assert compileQuery(query, "?").parameters("Bob@Example.com", context) == expected


def test_dovecotConninfo():
    from imapreferral.passdbs.sql import dovecotConninfo

    assert dovecotConninfo("host=db1 host=db2 dbname=mail maxconns=7 user=imap") == (
        "host=db1,db2 dbname=mail user=imap",
        7,
    )


@pytest.mark.parametrize(
    ("connect", "shown"),
    [
        ("host=db password=secret dbname=mail", "host=db password=*** dbname=mail"),
        ("host=db password = secret", "host=db password = ***"),
        ("password='se cr\\'et' host=db", "password=*** host=db"),
        ("password='unterminated", "password=***"),
        # libpq reads 'word' as a stray key and echoes it: both words are hidden.
        ("password=two words dbname=mail", "password=*** *** dbname=mail"),
        ("user=password host=db", "user=password host=db"),
        ("sslkey=k.pem sslpassword=secret", "sslkey=k.pem sslpassword=***"),
        ("postgresql://u:secret@db/mail", "postgresql://u:***@db/mail"),
        ("postgres://u@db/mail?sslmode=require&password=secret", "postgres://u@db/mail?sslmode=require&password=***"),
        ("users.sqlite", "users.sqlite"),
        # libpq refuses the key ('invalid connection option "PASSWORD"') and
        # the start-up error shows the conninfo: the value is still a password.
        ("host=db PASSWORD=secret", "host=db PASSWORD=***"),
        ("postgresql://u@db/mail?sslpassword=secret&x=1", "postgresql://u@db/mail?sslpassword=***&x=1"),
    ],
    ids=[
        "key=value", "spaces around =", "quoted", "unterminated quote", "stray word",
        "'password' as a value", "client key password", "URI user info", "URI query", "SQLite path",
        "upper-case key", "URI client key password",
    ],
)  # fmt: skip
def test_redactConninfo(connect, shown):
    assert redactConninfo(connect) == shown


def test_redactSecretsHidesEchoedPieces():
    connect = "host=db password=two words"
    error = 'missing "=" after "words" in connection info string'
    assert redactSecrets(error, connect) == 'missing "=" after "***" in connection info string'


def test_configReprHidesThePassword():
    config = parseSQLConfig(
        "x.conf",
        "driver = pgsql\nconnect = host=db password=secret\npassword_query = SELECT 1\n",
    )
    assert "secret" not in repr(config) and "password=***" in repr(config)


def test_malformedLineIsShownWithoutItsPassword():
    with pytest.raises(SQLConfigError) as e:
        parseSQLConfig("x.conf", "connect: host=db password=secret\n")
    assert "secret" not in str(e.value)
