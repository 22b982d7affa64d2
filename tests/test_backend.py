"""
The sans-IO backend dialogue: transcripts of what a backend sends, what we
send back, and what the client finally gets (Dovecot's texts).
"""

from __future__ import annotations

import base64

import attrs
import pytest

from imapreferral.imap.backend import (
    BackendDialogue,
    BackendLogin,
    ForwardedClient,
    Send,
    StartTLS,
)
from imapreferral.imap.backendresult import (
    BackendAuthFailed,
    BackendLoggedIn,
    BackendMisconfigured,
    BackendReferral,
    BackendRefused,
    BackendTempFail,
    BackendUnavailable,
)
from imapreferral.login.outcome import IMPLICIT_TLS, STARTTLS, ProxyDestination

#: Markers in a transcript: TLS comes up, the backend closes.
TLS, CLOSE = b"<TLS>", b"<CLOSE>"

DOVECOT = b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN] Dovecot ready.\r\n"
NO_ID = b"* OK [CAPABILITY IMAP4rev1 IDLE AUTH=PLAIN] ready\r\n"
BARE = b"* OK ready\r\n"
CAPS_AFTER = b"IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT"
OK_CAPS = b"OK [CAPABILITY " + CAPS_AFTER + b"] Logged in"
ID_FIELDS = (("x-originating-ip", "192.0.2.7"), ("x-proxy-ttl", "6"))
ID = b'ID ("x-originating-ip" "192.0.2.7" "x-proxy-ttl" "6")\r\n'
PLAIN_MASTER = base64.b64encode(b"alice\0admin\0masterpw")
UNAVAILABLE = b"a NO [UNAVAILABLE] Account is temporarily unavailable.\r\n"
SERVERBUG = b"a NO [SERVERBUG] Account is temporarily unavailable.\r\n"
AUTHFAILED = b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"


def login(**kwargs) -> BackendLogin:
    return BackendLogin(**{"user": "alice", "password": "secret", **kwargs})


def play(dialogue: BackendDialogue, steps: list[bytes]) -> tuple[list[bytes], object]:
    """
    Feed each step; return what we sent per step (C{<STARTTLS>} for that
    action, whose C{tlsStarted} runs at the next C{<TLS>} step) and the result.
    """
    sent, result = [], None
    for step in steps:
        if step == TLS:
            actions = dialogue.tlsStarted()
        elif step == CLOSE:
            actions = dialogue.connectionLost()
        else:
            actions = dialogue.receive(step)
        out = b""
        for action in actions:
            if isinstance(action, Send):
                out += action.data
            elif isinstance(action, StartTLS):
                out += b"<STARTTLS>"
            else:
                assert result is None and action is actions[-1]
                result = action
        sent.append(out)
    return sent, result


# (id, login, [(backend sends, we send)], result type, client-bound bytes for tag "a")
TRANSCRIPTS = [
    (
        "dovecot-id-and-login-pipelined",
        login(idFields=ID_FIELDS),
        [
            (DOVECOT, b"P1 " + ID + b'P2 LOGIN "alice" "secret"\r\n'),
            (b"* ID NIL\r\nP1 OK ID completed.\r\nP2 " + OK_CAPS + b"\r\n", b""),
        ],
        BackendLoggedIn,
        b"a " + OK_CAPS + b"\r\n",
    ),
    (
        "no-id-unless-listed",
        login(idFields=ID_FIELDS),
        [(NO_ID, b'P1 LOGIN "alice" "secret"\r\n'), (b"P1 " + OK_CAPS + b"\r\n", b"")],
        BackendLoggedIn,
        b"a " + OK_CAPS + b"\r\n",
    ),
    (
        "no-id-when-not-trusted",
        login(idFields=None),
        [(DOVECOT, b'P1 LOGIN "alice" "secret"\r\n'), (b"P1 " + OK_CAPS + b"\r\n", b"")],
        BackendLoggedIn,
        b"a " + OK_CAPS + b"\r\n",
    ),
    (
        "nopipelining-waits-for-id",
        login(idFields=ID_FIELDS, pipelining=False),
        [
            (DOVECOT, b"P1 " + ID),
            (b"* ID NIL\r\nP1 OK ID completed.\r\n", b'P2 LOGIN "alice" "secret"\r\n'),
            (b"P2 " + OK_CAPS + b"\r\n", b""),
        ],
        BackendLoggedIn,
        b"a " + OK_CAPS + b"\r\n",
    ),
    (
        "no-capabilities-in-banner-asks-and-waits",
        login(),
        [
            (BARE, b"P1 CAPABILITY\r\n"),
            (
                b"* CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN LOGINDISABLED IDLE\r\nP1 OK done\r\n",
                b"",
            ),
        ],
        BackendMisconfigured,
        SERVERBUG,
    ),
    (
        "dovecot-waiting-for-auth-then-greeting",
        login(idFields=ID_FIELDS),
        [
            (b"* OK Waiting for authentication process to respond..\r\n", b"P1 CAPABILITY\r\n"),
            (
                DOVECOT + b"* CAPABILITY IMAP4rev1 ID AUTH=PLAIN\r\nP1 OK\r\n",
                b"P2 " + ID + b'P3 LOGIN "alice" "secret"\r\n',
            ),
            (b"P2 OK\r\nP3 " + OK_CAPS + b"\r\n", b""),
        ],
        BackendLoggedIn,
        b"a " + OK_CAPS + b"\r\n",
    ),
    (
        "capabilities-inserted-without-pre-login-ones",
        login(),
        [
            (BARE, b"P1 CAPABILITY\r\n"),
            (
                b"* CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN IDLE\r\nP1 OK done\r\n",
                b'P2 LOGIN "alice" "secret"\r\n',
            ),
            (b"P2 OK [ALERT] Welcome back\r\n", b""),
        ],
        BackendLoggedIn,
        b"a OK [CAPABILITY IMAP4rev1 IDLE] Welcome back\r\n",
    ),
    (
        "ok-without-text",
        login(),
        [(NO_ID, b'P1 LOGIN "alice" "secret"\r\n'), (b"P1 OK\r\n", b"")],
        BackendLoggedIn,
        b"a OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n",
    ),
    (
        "alerts-passed-on-bye-not",
        login(),
        [
            (NO_ID, b'P1 LOGIN "alice" "secret"\r\n'),
            (
                b"* OK [ALERT] Mailbox almost full\r\n* BYE going\r\n* ID NIL\r\nP1 "
                + OK_CAPS
                + b"\r\n",
                b"",
            ),
        ],
        BackendLoggedIn,
        b"* OK [ALERT] Mailbox almost full\r\na " + OK_CAPS + b"\r\n",
    ),
    (
        "untagged-literal-skipped-whole",
        login(),
        [
            (NO_ID, b'P1 LOGIN "alice" "secret"\r\n'),
            (b'* ID ("name" {9}\r\nP1 NO x\r\n)\r\nP1 ' + OK_CAPS + b"\r\n", b""),
        ],
        BackendLoggedIn,
        b"a " + OK_CAPS + b"\r\n",
    ),
    (
        "8-bit-user-synchronizing-literal",
        login(user="jörg"),
        [
            (NO_ID, b"P1 LOGIN {5}\r\n"),
            (b"+ Ready\r\n", 'jörg "secret"\r\n'.encode()),
            (b"P1 " + OK_CAPS + b"\r\n", b""),
        ],
        BackendLoggedIn,
        b"a " + OK_CAPS + b"\r\n",
    ),
    (
        "8-bit-user-literal-plus",
        login(user="jörg"),
        [(DOVECOT, 'P1 LOGIN {5+}\r\njörg "secret"\r\n'.encode()), (b"P1 OK\r\n", b"")],
        BackendLoggedIn,
        b"a OK [CAPABILITY IMAP4rev1 LOGIN-REFERRALS ID ENABLE IDLE LITERAL+] Logged in\r\n",
    ),
    (
        "crlf-in-password-both-literals",
        login(user="bob", password="a\r\nb"),
        [
            (NO_ID, b'P1 LOGIN "bob" {4}\r\n'),
            (b"+\r\n", b"a\r\nb\r\n"),
            (b"P1 NO [AUTHENTICATIONFAILED] Bad\r\n", b""),
        ],
        BackendAuthFailed,
        AUTHFAILED,
    ),
    (
        "long-password-literal-minus-up-to-4096",
        login(password="x" * 4096),
        [
            (
                b"* OK [CAPABILITY IMAP4rev1 LITERAL-] hi\r\n",
                b'P1 LOGIN "alice" {4096+}\r\n' + b"x" * 4096 + b"\r\n",
            )
        ],
        None,
        None,
    ),
    (
        "longer-password-literal-minus-synchronizes",
        login(password="x" * 4097),
        [
            (b"* OK [CAPABILITY IMAP4rev1 LITERAL-] hi\r\n", b'P1 LOGIN "alice" {4097}\r\n'),
            (b"+ go\r\n", b"x" * 4097 + b"\r\n"),
        ],
        None,
        None,
    ),
    (
        "master-sasl-ir",
        login(master="admin", password="masterpw"),
        [
            (NO_ID.replace(b"IDLE", b"SASL-IR"), b"P1 AUTHENTICATE PLAIN " + PLAIN_MASTER + b"\r\n"),
            (b"P1 " + OK_CAPS + b"\r\n", b""),
        ],
        BackendLoggedIn,
        b"a " + OK_CAPS + b"\r\n",
    ),
    (
        "master-continuation",
        login(master="admin", password="masterpw"),
        [
            (NO_ID, b"P1 AUTHENTICATE PLAIN\r\n"),
            (b"+ \r\n", PLAIN_MASTER + b"\r\n"),
            (b"+ more?\r\n", b"*\r\n"),
            (b"P1 BAD Cancelled\r\n", b""),
        ],
        BackendAuthFailed,
        AUTHFAILED,
    ),
    (
        "starttls-then-capability-id-login-inside",
        login(starttls=True, idFields=ID_FIELDS),
        [
            (
                b"* OK [CAPABILITY IMAP4rev1 ID STARTTLS LOGINDISABLED] hi\r\n",
                b"P1 STARTTLS\r\n",
            ),
            (b"* OK [ALERT] forged before TLS\r\nP1 OK Begin TLS\r\n", b"<STARTTLS>"),
            (TLS, b"P2 CAPABILITY\r\n"),
            (
                b"* CAPABILITY IMAP4rev1 ID AUTH=PLAIN\r\nP2 OK\r\n",
                b"P3 " + ID + b'P4 LOGIN "alice" "secret"\r\n',
            ),
            (b"P3 OK\r\nP4 " + OK_CAPS + b"\r\n", b""),
        ],
        BackendLoggedIn,
        b"a " + OK_CAPS + b"\r\n",
    ),
    (
        "starttls-not-offered",
        login(starttls=True),
        [(NO_ID, b"")],
        BackendMisconfigured,
        SERVERBUG,
    ),
    (
        "starttls-refused",
        login(starttls=True),
        [(BARE, b"P1 STARTTLS\r\n"), (b"P1 NO not now\r\n", b"")],
        BackendUnavailable,
        UNAVAILABLE,
    ),
    (
        "starttls-reply-with-injected-data",
        login(starttls=True),
        [(BARE, b"P1 STARTTLS\r\n"), (b"P1 OK go\r\nP2 OK injected\r\n", b"")],
        BackendUnavailable,
        UNAVAILABLE,
    ),
    (
        "logindisabled-on-plaintext",
        login(),
        [(b"* OK [CAPABILITY IMAP4rev1 LOGINDISABLED] hi\r\n", b"")],
        BackendMisconfigured,
        SERVERBUG,
    ),
    (
        "logindisabled-ignored-on-implicit-tls",
        login(secured=True),
        [
            (b"* OK [CAPABILITY IMAP4rev1 LOGINDISABLED] hi\r\n", b'P1 LOGIN "alice" "secret"\r\n'),
            (b"P1 " + OK_CAPS + b"\r\n", b""),
        ],
        BackendLoggedIn,
        b"a " + OK_CAPS + b"\r\n",
    ),
    (
        "banner-not-ok",
        login(),
        [(b"* BYE Too many connections\r\n", b"")],
        BackendUnavailable,
        UNAVAILABLE,
    ),
    (
        "banner-preauth",
        login(),
        [(b"* PREAUTH [CAPABILITY IMAP4rev1] hi\r\n", b"")],
        BackendUnavailable,
        UNAVAILABLE,
    ),
    (
        "banner-not-imap4rev1",
        login(),
        [(b"* OK [CAPABILITY IMAP4] old\r\n", b"")],
        BackendUnavailable,
        UNAVAILABLE,
    ),
    (
        "capability-reply-not-imap4rev1",
        login(),
        [(BARE, b"P1 CAPABILITY\r\n"), (b"* CAPABILITY IMAP4 X\r\nP1 OK\r\n", b"")],
        BackendUnavailable,
        UNAVAILABLE,
    ),
    (
        "authenticationfailed-hidden",
        login(),
        [(NO_ID, b'P1 LOGIN "alice" "secret"\r\n'), (b"P1 NO [AUTHENTICATIONFAILED] No such user\r\n", b"")],
        BackendAuthFailed,
        AUTHFAILED,
    ),
    (
        "no-without-code-hidden",
        login(),
        [(NO_ID, b'P1 LOGIN "alice" "secret"\r\n'), (b"P1 NO Unknown user alice\r\n", b"")],
        BackendAuthFailed,
        AUTHFAILED,
    ),
    (
        "bad-hidden",
        login(),
        [(NO_ID, b'P1 LOGIN "alice" "secret"\r\n'), (b"P1 BAD what?\r\n", b"")],
        BackendAuthFailed,
        AUTHFAILED,
    ),
    (
        "no-unavailable-relayed",
        login(),
        [(NO_ID, b'P1 LOGIN "alice" "secret"\r\n'), (b"P1 NO [UNAVAILABLE] Maintenance\r\n", b"")],
        BackendTempFail,
        b"a NO [UNAVAILABLE] Maintenance\r\n",
    ),
    (
        "no-limit-relayed",
        login(),
        [(NO_ID, b'P1 LOGIN "alice" "secret"\r\n'), (b"P1 NO [LIMIT] x\r\n", b"")],
        BackendRefused,
        b"a NO [LIMIT] x\r\n",
    ),
    (
        "no-serverbug",
        login(),
        [(NO_ID, b'P1 LOGIN "alice" "secret"\r\n'), (b"P1 NO [SERVERBUG] oops\r\n", b"")],
        BackendMisconfigured,
        SERVERBUG,
    ),
    (
        "id-serverbug-is-fatal",
        login(idFields=ID_FIELDS),
        [
            (DOVECOT, b"P1 " + ID + b'P2 LOGIN "alice" "secret"\r\n'),
            (b"P1 NO [SERVERBUG] bad ID\r\n", b""),
        ],
        BackendMisconfigured,
        SERVERBUG,
    ),
    (
        "id-no-ignored",
        login(idFields=ID_FIELDS),
        [
            (DOVECOT, b"P1 " + ID + b'P2 LOGIN "alice" "secret"\r\n'),
            (b"P1 BAD no ID here\r\nP2 " + OK_CAPS + b"\r\n", b""),
        ],
        BackendLoggedIn,
        b"a " + OK_CAPS + b"\r\n",
    ),
    (
        "bye-then-close",
        login(),
        [(NO_ID, b'P1 LOGIN "alice" "secret"\r\n'), (b"* BYE Server shutting down\r\n", b""), (CLOSE, b"")],
        BackendUnavailable,
        UNAVAILABLE,
    ),
    (
        "close-before-banner",
        login(),
        [(CLOSE, b"")],
        BackendUnavailable,
        UNAVAILABLE,
    ),
    (
        "unknown-tag",
        login(),
        [(NO_ID, b'P1 LOGIN "alice" "secret"\r\n'), (b"Z9 OK what\r\n", b"")],
        BackendUnavailable,
        UNAVAILABLE,
    ),
    (
        "unexpected-continuation",
        login(),
        [(NO_ID, b'P1 LOGIN "alice" "secret"\r\n'), (b"+ go on\r\n", b"")],
        BackendUnavailable,
        UNAVAILABLE,
    ),
    (
        "nul-in-password-never-sent",
        login(password="a\0b"),
        [(NO_ID, b"")],
        BackendAuthFailed,
        AUTHFAILED,
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("backendLogin", "steps", "kind", "client"),
    [pytest.param(*row[1:], id=row[0]) for row in TRANSCRIPTS],
)
def test_transcript(backendLogin, steps, kind, client):
    dialogue = BackendDialogue(backendLogin)
    sent, result = play(dialogue, [backend for backend, _ in steps])
    assert sent == [ours for _, ours in steps]
    if kind is None:
        assert result is None and not dialogue.finished
        return
    assert type(result) is kind
    assert result.clientBytes(b"a") == client
    assert dialogue.finished


def test_everyByteBoundary():
    """One transcript split into two reads at every byte, and byte by byte."""
    backend = (
        DOVECOT
        + b"* ID NIL\r\n* OK [ALERT] hi\r\nP1 OK ID completed.\r\nP2 "
        + OK_CAPS
        + b"\r\n* 3 EXISTS\r\n"
    )
    whole = play(BackendDialogue(login(idFields=ID_FIELDS)), [backend])
    assert whole[0] == [b"P1 " + ID + b'P2 LOGIN "alice" "secret"\r\n']
    assert whole[1] == BackendLoggedIn(
        OK_CAPS, tuple(CAPS_AFTER.split()), (b"* OK [ALERT] hi",), b"* 3 EXISTS\r\n"
    )
    for cut in range(1, len(backend)):
        dialogue = BackendDialogue(login(idFields=ID_FIELDS))
        sent, result = play(dialogue, [backend[:cut]])
        if result is None:
            more, result = play(dialogue, [backend[cut:]])
            sent += more
        else:  # what comes after the result is the relay's
            result = attrs.evolve(result, leftover=result.leftover + backend[cut:])
        assert (b"".join(sent), result) == (whole[0][0], whole[1]), cut
    sent, result = play(
        BackendDialogue(login(idFields=ID_FIELDS)), [bytes([b]) for b in backend[:-12]]
    )
    assert (b"".join(sent), result) == (whole[0][0], attrs.evolve(whole[1], leftover=b""))


def test_leftoverAfterTaggedOK():
    _, result = play(
        BackendDialogue(login()),
        [NO_ID, b"P1 " + OK_CAPS + b"\r\n* 1 EXISTS\r\n* 1 RECENT\r\npartial"],
    )
    assert result.leftover == b"* 1 EXISTS\r\n* 1 RECENT\r\npartial"


def test_nothingAfterResult():
    dialogue = BackendDialogue(login())
    play(dialogue, [NO_ID, b"P1 OK\r\n"])
    assert dialogue.receive(b"* 1 EXISTS\r\n") == []
    assert dialogue.connectionLost() == []


def test_capabilityForClientThatAsked():
    _, result = play(BackendDialogue(login()), [NO_ID, b"P1 " + OK_CAPS + b"\r\n"])
    assert result.clientBytes(b"a", capabilityAsked=True) == (
        b"* CAPABILITY " + CAPS_AFTER + b"\r\na " + OK_CAPS + b"\r\n"
    )


def test_referralURL():
    _, result = play(
        BackendDialogue(login()),
        [NO_ID, b"P1 NO [REFERRAL imap://bob@[2001:db8::2]:1143/] Try there\r\n"],
    )
    assert result == BackendReferral("imap://bob@[2001:db8::2]:1143/")


@pytest.mark.parametrize(
    ("steps", "state", "cause"),
    [
        ([b"* BYE Too many\r\n"], "banner", "invalid banner * BYE Too many"),
        ([BARE, CLOSE], "login", "backend connection closed in state login"),
        (
            [NO_ID, b"* BYE Shutting down\r\n", CLOSE],
            "login",
            "backend connection closed after BYE Shutting down in state login",
        ),
        ([NO_ID, b"P1 NO [LIMIT] Too many\r\n"], "login", "NO [LIMIT] Too many"),
        ([NO_ID, b"P1 NO nope\r\n"], "login", "backend said NO nope"),
        ([b"* OK hi\r\n", b"\x00\x1b" * 10 + b"\r\n"], "login", r"\x00\x1b"),
    ],
    ids=["banner", "closed", "bye", "limit", "authfailed", "controls-escaped"],
)
def test_failureCarriesStateAndCause(steps, state, cause):
    """Every failure names its state and a one-line printable cause."""
    _, result = play(BackendDialogue(login()), steps)
    assert result.state == state
    assert cause in result.cause
    assert result.cause.isprintable()


def test_starttlsStateUntilFirstReplyInsideTLS():
    dialogue = BackendDialogue(login(starttls=True))
    play(dialogue, [b"* OK [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n", b"P1 OK go\r\n", TLS])
    assert dialogue.state == "starttls"
    assert play(dialogue, [CLOSE])[1].state == "starttls"


def test_dataBeforeTLSHandshakeIsRefused():
    dialogue = BackendDialogue(login(starttls=True))
    play(dialogue, [b"* OK [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n", b"P1 OK go\r\n"])
    assert isinstance(dialogue.receive(b"* OK plain\r\n")[-1], BackendUnavailable)


def test_overlongLineFails():
    dialogue = BackendDialogue(login())
    assert play(dialogue, [NO_ID])[0] == [b'P1 LOGIN "alice" "secret"\r\n']
    actions = dialogue.receive(b"* " + b"x" * 70000)
    assert isinstance(actions[-1], BackendUnavailable)


def test_passwordNotInRepr():
    assert "secret" not in repr(login())
    dialogue = BackendDialogue(login())
    assert "secret" not in repr(dialogue.receive(NO_ID))


def test_idFieldsFromClient():
    client = ForwardedClient(
        originatingIP="192.0.2.7",
        originatingPort=51234,
        connectedIP="198.51.100.1",
        connectedPort=143,
        sessionID="Abc123",
        ttl=7,
        secured=True,
    )
    assert client.idFields((("tenant", "acme"),)) == (
        ("x-session-id", "Abc123"),
        ("x-originating-ip", "192.0.2.7"),
        ("x-originating-port", "51234"),
        ("x-connected-ip", "198.51.100.1"),
        ("x-connected-port", "143"),
        ("x-proxy-ttl", "6"),
        ("x-client-transport", "TLS"),
        ("x-forward-tenant", "acme"),
    )


def test_idLeavesOutWhatCannotBeSent():
    """RFC 2971: names up to 30 octets; values quoted, up to 1024."""
    fields = (
        ("x-forward-" + "k" * 21, "v"),
        ("x-forward-8bit", "jörg"),
        ("x-forward-long", "v" * 1025),
        ("x-forward-ok", 'say "hi"'),
    )
    sent, _ = play(BackendDialogue(login(idFields=fields)), [DOVECOT])
    assert sent[0].startswith(b'P1 ID ("x-forward-ok" "say \\"hi\\"")\r\nP2 LOGIN')


@pytest.mark.parametrize(
    ("tls", "secured", "starttls"),
    [("plain", False, False), (IMPLICIT_TLS, True, False), (STARTTLS, False, True)],
)
def test_loginForDestination(tls, secured, starttls):
    destination = ProxyDestination(
        host="h", port=143, user="bob", password="pw", master="m", tls=tls, pipelining=False
    )
    assert BackendLogin.forDestination(destination, ForwardedClient(ttl=5)) == BackendLogin(
        user="bob",
        password="pw",
        master="m",
        starttls=starttls,
        secured=secured,
        pipelining=False,
        idFields=(("x-proxy-ttl", "4"), ("x-client-transport", "insecure")),
    )


def test_loginForDestinationNotTrusted():
    destination = ProxyDestination(host="h", port=143, user="bob", password="pw", sendID=False)
    assert BackendLogin.forDestination(destination, ForwardedClient()).idFields is None


@pytest.mark.parametrize("reply", [b"P1 OK\r\n", b"P1 NO nope\r\n"], ids=["ok", "no"])
def test_credentialsForgottenOnceFinished(reply):
    """As Dovecot's proxy_free_password: nothing keeps the password after."""
    dialogue = BackendDialogue(login(password="s3cret-pw"))
    play(dialogue, [NO_ID, reply])
    held = []
    for value in vars(dialogue).values():
        held += attrs.astuple(value) if attrs.has(type(value)) else [value]
    assert not [v for v in held if isinstance(v, str | bytes) and "s3cret" in repr(v)]
