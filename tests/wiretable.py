"""The core issue's wire table, shared by the passdb-specific test modules."""

from __future__ import annotations

REFER = b"Try this server instead."
SUGGEST = b"Logged in, but you should use this server instead."
FAILED = b"NO [AUTHENTICATIONFAILED] Authentication failed."
UNAVAILABLE = b"NO [UNAVAILABLE] Temporary authentication failure."
#: A proxy backend nobody listens on (Dovecot's words).
BACKEND_UNAVAILABLE = b"NO [UNAVAILABLE] Account is temporarily unavailable."


# (user, expected tagged reply with {mech} for the ;AUTH= value)
REFERRAL_ROWS = {
    "nologin": (b"refnl", b"NO [REFERRAL imap://refnl;AUTH={mech}@imap2.example.com/] " + REFER),
    "no-nologin-ok-referral": (
        b"ref",
        b"OK [REFERRAL imap://ref;AUTH={mech}@imap2.example.com/] " + SUGGEST,
    ),
    "port-1143": (
        b"refport",
        b"NO [REFERRAL imap://refport;AUTH={mech}@imap2.example.com:1143/] " + REFER,
    ),
    "port-143-omitted": (
        b"refport143",
        b"NO [REFERRAL imap://refport143;AUTH={mech}@imap2.example.com/] " + REFER,
    ),
    "destuser-at": (
        b"refdest",
        b"NO [REFERRAL imap://other%40example.com;AUTH={mech}@imap2.example.com/] " + REFER,
    ),
    "destuser-specials": (
        b"refspecial",
        b"NO [REFERRAL imap://a%3bb%2fc%3ad%40e;AUTH={mech}@imap2.example.com/] " + REFER,
    ),
    "destuser-utf8": (
        b"refutf8",
        b"NO [REFERRAL imap://j%c3%b6rg%40ex%c3%a4mple.com;AUTH={mech}@imap2.example.com/] "
        + REFER,
    ),
    "login-name-with-at": (
        b"u@example.com",
        b"NO [REFERRAL imap://u%40example.com;AUTH={mech}@imap2.example.com/] " + REFER,
    ),
    "reason-nologin": (
        b"refreason",
        b"NO [REFERRAL imap://refreason;AUTH={mech}@imap2.example.com/] Moved",
    ),
    "reason-ok": (
        b"refokreason",
        b"OK [REFERRAL imap://refokreason;AUTH={mech}@imap2.example.com/] Moved",
    ),
    "reason-crlf-sanitised": (
        b"refcrlf",
        b"NO [REFERRAL imap://refcrlf;AUTH={mech}@imap2.example.com/] line1  * BYE injected tab",
    ),
    "reason-spaces": (
        b"refspaces",
        b"NO [REFERRAL imap://refspaces;AUTH={mech}@imap2.example.com/] Custom text with spaces",
    ),
    "ipv6-bracketed": (b"ref6", b"NO [REFERRAL imap://ref6;AUTH={mech}@[2001:db8::1]/] " + REFER),
    "ipv6-given-bracketed": (
        b"ref6b",
        b"NO [REFERRAL imap://ref6b;AUTH={mech}@[2001:db8::1]/] " + REFER,
    ),
    "ipv6-port": (
        b"ref6port",
        b"NO [REFERRAL imap://ref6port;AUTH={mech}@[2001:db8::1]:1143/] " + REFER,
    ),
    "nologin-no-host": (b"nl", b"NO [CONTACTADMIN] Login disabled for this user"),
    "nologin-no-host-reason": (b"nlreason", b"NO [CONTACTADMIN] Maintenance"),
    "empty-host": (b"emptyhost", UNAVAILABLE),
    "proxy": (b"prox", BACKEND_UNAVAILABLE),
    "proxy-beats-nologin": (b"proxnl", BACKEND_UNAVAILABLE),
    "unknown-scheme": (b"weird", UNAVAILABLE),
}

#: Rows whose reply differs with CRAM-MD5: it carries no password to log in
#: to a proxy backend with, and the passdb gives no C{pass}.
CRAM_MD5_ROWS = {"proxy": UNAVAILABLE, "proxy-beats-nologin": UNAVAILABLE}
