"""RFC 5092 referral URLs: (input, expected) tables, no sockets."""

from __future__ import annotations

import pytest

from imapreferral.imap.url import IMAPURL, encodeAchar, formatHost, parseServerURL

URLS = [
    # (user, host, port, auth, expected)
    ("refnl", "imap2.example.com", None, "PLAIN", "imap://refnl;AUTH=PLAIN@imap2.example.com/"),
    ("u", "h.example", 1143, "PLAIN", "imap://u;AUTH=PLAIN@h.example:1143/"),  # port kept
    ("u", "h.example", 143, "PLAIN", "imap://u;AUTH=PLAIN@h.example/"),  # default port left out
    ("u", "h.example", 0, "PLAIN", "imap://u;AUTH=PLAIN@h.example/"),  # 0 means default
    ("u", "h.example", None, "*", "imap://u;AUTH=*@h.example/"),  # any mechanism
    ("u", "h.example", None, "CRAM-MD5", "imap://u;AUTH=CRAM-MD5@h.example/"),
    ("", "h.example", None, "PLAIN", "imap://;AUTH=PLAIN@h.example/"),  # destuser=''
    ("u", "192.0.2.1", None, "PLAIN", "imap://u;AUTH=PLAIN@192.0.2.1/"),  # IPv4 literal
    ("u", "2001:db8::1", None, "PLAIN", "imap://u;AUTH=PLAIN@[2001:db8::1]/"),  # IPv6 bracketed
    ("u", "[2001:db8::1]", 1143, "PLAIN", "imap://u;AUTH=PLAIN@[2001:db8::1]:1143/"),
    ("u", "::1", None, "PLAIN", "imap://u;AUTH=PLAIN@[::1]/"),
    ("u", "a/b?c#d@e", None, "PLAIN", "imap://u;AUTH=PLAIN@a%2fb%3fc%23d%40e/"),  # host specials
]


@pytest.mark.parametrize(("user", "host", "port", "auth", "expected"), URLS)
def test_urlText(user, host, port, auth, expected):
    assert IMAPURL(user, host, port, auth).asText() == expected


ACHARS = [
    ("other@example.com", "other%40example.com"),  # at sign in user name
    ("a;b/c:d@e", "a%3bb%2fc%3ad%40e"),  # RFC 5092 delimiters
    ("jörg@exämple.com", "j%c3%b6rg%40ex%c3%a4mple.com"),  # UTF-8, byte by byte, lower hex
    ("!$&'()*+,=", "!$&'()*+,="),  # sub-delims that achar allows stay
    ("-._~AZaz09", "-._~AZaz09"),  # unreserved stay
    ('%?#" \\[]<>{}|^`', "%25%3f%23%22%20%5c%5b%5d%3c%3e%7b%7d%7c%5e%60"),
    ("\r\n\x00\x7f", "%0d%0a%00%7f"),  # controls
]


@pytest.mark.parametrize(("text", "expected"), ACHARS)
def test_achar(text, expected):
    assert encodeAchar(text) == expected


def test_dovecotAllAsciiSpecials():
    """Dovecot's observed encoding of every ASCII special, for comparison."""
    text = "a;b/c:d@e%f?g#h&i=j+k!l$m'n\"o p\\q,r*s[t]u~v(w)x<y>z{0}1|2^3`4"
    assert encodeAchar(text) == (
        "a%3bb%2fc%3ad%40e%25f%3fg%23h&i=j+k!l$m'n%22o%20p%5cq,r*s%5bt%5du~v(w)x%3cy%3ez%7b0%7d1%7c2%5e3%604"
    )


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("imap2.example.com", "imap2.example.com"),
        ("2001:DB8::1", "[2001:db8::1]"),
        ("[x]", "%5bx%5d"),
    ],
)
def test_formatHost(host, expected):
    assert formatHost(host) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("imap://imap2.example.com/", IMAPURL("", "imap2.example.com")),
        ("imap://imap2.example.com", IMAPURL("", "imap2.example.com")),
        ("IMAP://bob@imap2.example.com:1143/", IMAPURL("bob", "imap2.example.com", 1143)),
        (
            "imap://bob;AUTH=*@imap2.example.com/INBOX",
            IMAPURL("bob", "imap2.example.com", None, "*"),
        ),
        (
            "imap://j%c3%b6rg%40x;AUTH=PLAIN@[2001:db8::2]:993/",
            IMAPURL("jörg@x", "2001:db8::2", 993, "PLAIN"),
        ),
        ("imap://b%2fc@10.0.0.1/", IMAPURL("b/c", "10.0.0.1")),
    ],
    ids=["bare", "no-slash", "user-port", "auth-star-path", "pct-ipv6", "pct-slash"],
)
def test_parseServerURL(text, expected):
    assert parseServerURL(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "http://h/",
        "imap:/h/",
        "imap:///",
        "imap://h:port/",
        "imap://h:0/",
        "imap://h:70000/",
        "imap://[not-v6]/",
        "imap://[2001:db8::1]x/",
        "imap://u;X=1@h/",
        "imap://u%zz@h/",
    ],
)
def test_parseServerURLRefusesMalformed(text):
    with pytest.raises(ValueError):
        parseServerURL(text)


@pytest.mark.parametrize(
    "url",
    [
        IMAPURL("bob", "imap2.example.com", 1143, "PLAIN"),
        IMAPURL("a;b/c:d@e", "2001:db8::1", None),
        IMAPURL("jörg@exämple.com", "imap2.example.com"),
    ],
)
def test_parseServerURLRoundTrips(url):
    assert parseServerURL(url.asText()) == url
