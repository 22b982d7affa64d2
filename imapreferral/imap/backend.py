"""
The front's own IMAP dialogue with a proxy backend, without I/O.

Dovecot's proxy (C{imap-login/imap-proxy.c}) does not relay the client's
authentication: the client authenticates here, and the front then logs in
to the backend by itself — banner check, optional C{ID} carrying the
client's address, optional C{STARTTLS}, C{CAPABILITY} when the greeting did
not list them, then C{LOGIN} or C{AUTHENTICATE PLAIN} for a master user —
and maps the backend's answer to Dovecot's wording. L{BackendDialogue} does
exactly that, fed the backend's bytes (L{BackendDialogue.receive}) and
answering with L{Send}, L{StartTLS} and, last, one result value. The caller
owns the socket, the TLS and the clock (L{imapreferral.proxy.connect}).

Where we differ from Dovecot 2.3, on purpose:
  - With C{starttls}, C{ID} (the client's address) goes inside TLS, after
    the handshake, not in plaintext before C{STARTTLS}.
  - When the greeting lists no capabilities on a plaintext link, we wait
    for the C{CAPABILITY} reply before sending a password, so a
    C{LOGINDISABLED} backend never sees one.
  - Untagged lines received before the TLS handshake are dropped, not
    passed on: anyone on the path could have written them.
  - Capabilities we insert into the tagged OK leave out the pre-login ones
    (C{AUTH=}, C{SASL-IR}, C{STARTTLS}, C{LOGINDISABLED}).
  - Values that need it go as literals (C{LITERAL+}/C{LITERAL-} when
    offered), so 8-bit and long passwords work; only NUL is refused.
"""

from __future__ import annotations

import base64
import re

import attrs

from imapreferral.imap.backendresult import (
    BANNER,
    LOGIN,
    STARTTLS_STATE,
    BackendAuthFailed,
    BackendLoggedIn,
    BackendMisconfigured,
    BackendReferral,
    BackendRefused,
    BackendResult,
    BackendTempFail,
    BackendUnavailable,
    logText,
)
from imapreferral.login.outcome import IMPLICIT_TLS, STARTTLS, ProxyDestination

#: Dovecot's C{LOGIN_PROXY_TTL}: hops a session may take through proxies.
DEFAULT_PROXY_TTL = 7

#: Bound on one backend line with its literals, and on what we pass on.
MAX_LINE = 65536
MAX_UNTAGGED = 65536

#: RFC 2971 §3.3: field names at most 30 octets; values at most 1024
#: (Dovecot's limit for the ID it receives).
_MAX_ID_NAME, _MAX_ID_VALUE = 30, 1024

#: What may not go in a quoted string besides 8-bit bytes.
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")

#: Longest string we send quoted; longer ones go as literals.
_MAX_QUOTED = 1024

#: RFC 7888 §4: LITERAL- allows non-synchronizing literals up to 4096 octets.
_LITERAL_MINUS_MAX = 4096

#: A literal at the end of a line: C{{N}} or C{{N+}} (RFC 7888).
_LITERAL = re.compile(rb"\{(\d{1,9})\+?\}$")

#: Capabilities that only describe the not-logged-in state (RFC 3501
#: §6.2.1, §6.1.1; RFC 4959); left out when we tell the client what the
#: backend offers after login.
_PRE_LOGIN_ONLY = (b"AUTH=", b"SASL-IR", b"STARTTLS", b"LOGINDISABLED")


@attrs.frozen
class Send:
    """Write C{data} to the backend (it may hold a password: no repr)."""

    data: bytes = attrs.field(repr=False)


@attrs.frozen
class StartTLS:
    """
    Start TLS on the backend link now (the backend said OK to STARTTLS),
    then call L{BackendDialogue.tlsStarted}.
    """


Action = Send | StartTLS | BackendResult


@attrs.frozen
class ForwardedClient:
    """
    What the backend should learn about the client, as Dovecot's C{ID}
    (C{imap-proxy.c} C{proxy_write_id}) tells it. A backend honours these
    only from its trusted networks (Dovecot: C{login_trusted_networks}).

    @ivar originatingIP: The client's address (behind HAProxy, the PROXY
        header's), and C{originatingPort} its port.
    @ivar connectedIP: The address the client connected to, and
        C{connectedPort} that port.
    @ivar sessionID: Our session id, so logs on both sides can be joined.
    @ivar ttl: Our proxy TTL; the backend is told one less.
    @ivar secured: Whether the client's connection is TLS.
    """

    originatingIP: str | None = None
    originatingPort: int | None = None
    connectedIP: str | None = None
    connectedPort: int | None = None
    sessionID: str | None = None
    ttl: int = DEFAULT_PROXY_TTL
    secured: bool = False

    def idFields(self, forward: tuple[tuple[str, str], ...] = ()) -> tuple[tuple[str, str], ...]:
        """The ID field/value pairs, C{x-forward-<key>} last."""
        fields = [
            ("x-session-id", self.sessionID),
            ("x-originating-ip", self.originatingIP),
            ("x-originating-port", self.originatingPort),
            ("x-connected-ip", self.connectedIP),
            ("x-connected-port", self.connectedPort),
            ("x-proxy-ttl", self.ttl - 1),
            ("x-client-transport", "TLS" if self.secured else "insecure"),
        ]
        fields += [(f"x-forward-{key}", value) for key, value in forward]
        return tuple((name, str(value)) for name, value in fields if value is not None)


@attrs.frozen
class BackendLogin:
    """
    How to log in to one backend.

    @ivar user: The backend user (for a master login, the authzid).
    @ivar password: The backend password (the master's, with C{master}).
    @ivar master: Log in as this master user for C{user}, by
        C{AUTHENTICATE PLAIN} (authzid = C{user}, authcid = C{master}).
    @ivar starttls: Send C{STARTTLS} and go on inside TLS.
    @ivar secured: The link is TLS already (implicit TLS): C{LOGINDISABLED}
        does not apply.
    @ivar pipelining: Send C{ID} and the login in one write.
    @ivar idFields: C{ID} field/value pairs to send when the backend lists
        C{ID}, or L{None} to send none (C{proxy_not_trusted}).
    """

    user: str
    password: str = attrs.field(repr=False)
    master: str | None = None
    starttls: bool = False
    secured: bool = False
    pipelining: bool = True
    idFields: tuple[tuple[str, str], ...] | None = None

    @classmethod
    def forDestination(
        cls, destination: ProxyDestination, client: ForwardedClient
    ) -> BackendLogin:
        """The login a L{ProxyDestination} asks for, ID from C{client}."""
        return cls(
            user=destination.user,
            password=destination.password,
            master=destination.master,
            starttls=destination.tls == STARTTLS,
            secured=destination.tls == IMPLICIT_TLS,
            pipelining=destination.pipelining,
            idFields=client.idFields(destination.forward) if destination.sendID else None,
        )


def _quotable(value: bytes) -> bool:
    """RFC 3501 quoted: 7-bit text; we also keep controls out, and length."""
    return len(value) <= _MAX_QUOTED and value.isascii() and _CONTROL.search(value) is None


def quoted(value: bytes) -> bytes:
    """An RFC 3501 C{quoted} string (caller checked L{_quotable})."""
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _parseCapabilities(text: bytes) -> tuple[bytes, ...]:
    return tuple(text.split())


def _respCode(text: bytes) -> tuple[bytes, bytes, bytes]:
    """
    C{[CODE args] rest} → C{(CODE, args, rest)}; no code → C{(b"", b"", text)}.
    Brackets nest, so C{[REFERRAL imap://[2001:db8::1]/]} stays whole.
    """
    if not text.startswith(b"["):
        return b"", b"", text
    end = text.find(b"]")
    if end > 0 and text.find(b"[", 1, end) < 0:  # no nesting: no byte-by-byte walk
        name, _, args = text[1:end].partition(b" ")
        return name.upper(), args, text[end + 1 :].lstrip(b" ")
    depth = 0
    for end, byte in enumerate(text):
        depth += (byte == 0x5B) - (byte == 0x5D)
        if depth == 0:
            name, _, args = text[1:end].partition(b" ")
            return name.upper(), args, text[end + 1 :].lstrip(b" ")
    return b"", b"", text


class BackendDialogue:
    """
    One login to one backend, as a state machine over its bytes.

    Feed it everything the backend sends (L{receive}), and L{tlsStarted} /
    L{connectionLost} when those happen; each returns the actions to take
    in order. The last action is a result (L{BackendLoggedIn} or a
    failure); after it the dialogue is L{finished} and ignores input.

    Tags: each command we send gets a fresh tag (C{P1}, C{P2}, ...), and
    the client's commands reach the backend only after the tagged login
    reply, so no reply can be taken for another's.

    @ivar state: Where we are, for a timeout's log line: C{banner},
        C{starttls} or C{login}.
    """

    def __init__(self, login: BackendLogin) -> None:
        self._login = login
        # Surrogates: the client's bytes as sent, even when not UTF-8.
        self._user = login.user.encode("utf-8", "surrogateescape")
        self._password = login.password.encode("utf-8", "surrogateescape")
        self._master = None if login.master is None else login.master.encode()
        self.state = BANNER
        self.finished = False
        self._bannerSeen = False
        self._awaitingTLS = False
        self._buffer = bytearray()
        self._lineParts: list[bytes] = []
        self._tags = 0
        self._waiting: dict[bytes, str] = {}
        self._capabilities: tuple[bytes, ...] | None = None
        self._continuations: list[bytes] = []
        self._authenticating = False
        self._tlsDone = login.secured
        self._idSent = False
        self._untagged: list[bytes] = []
        self._untaggedSize = 0
        self._bye: bytes | None = None

    # Input

    def receive(self, data: bytes) -> list[Action]:
        """The backend sent C{data}; return what to do."""
        if self.finished:
            return []
        if self._awaitingTLS:
            return self._fail(BackendUnavailable, "backend sent data before the TLS handshake")
        self._buffer += data
        actions: list[Action] = []
        while not self.finished:
            line = self._nextLine()
            if line is None:
                break
            actions += line if isinstance(line, list) else self._lineReceived(line)
        if not self.finished and len(self._buffer) + sum(map(len, self._lineParts)) > MAX_LINE:
            actions += self._fail(BackendUnavailable, f"backend line longer than {MAX_LINE}")
        return actions

    def tlsStarted(self) -> list[Action]:
        """
        TLS is on (after L{StartTLS}). What the backend said before cannot
        be trusted: capabilities are asked again, passed-on lines dropped.
        """
        self._tlsDone, self._awaitingTLS = True, False
        self._capabilities = None
        self._untagged.clear()
        self.state = STARTTLS_STATE
        return self._proceed()

    def connectionLost(self, why: str = "connection closed") -> list[Action]:
        """The backend went away (Dovecot swallows its C{* BYE} and fails)."""
        if self.finished:
            return []
        if self._bye is not None:
            why = f"{why} after BYE {logText(self._bye)}"
        return self._fail(BackendUnavailable, f"backend {why} in state {self.state}")

    def _nextLine(self) -> bytes | list[Action] | None:
        """
        The next complete line, CRLF stripped, literals included with their
        CRLF; L{None} until one is complete.
        """
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                return None
            line = bytes(self._buffer[:end]).removesuffix(b"\r")
            literal = _LITERAL.search(line)
            if not literal:
                del self._buffer[: end + 1]
                whole = b"".join([*self._lineParts, line])
                self._lineParts.clear()
                return whole
            size = int(literal.group(1))
            if size > MAX_LINE:
                return self._fail(BackendUnavailable, f"backend literal of {size} bytes")
            if len(self._buffer) < end + 1 + size:
                return None
            self._lineParts.append(bytes(self._buffer[: end + 1 + size]))
            del self._buffer[: end + 1 + size]

    def _lineReceived(self, line: bytes) -> list[Action]:
        if not self._bannerSeen:
            self._bannerSeen = True
            return self._banner(line)
        if line.startswith(b"+"):
            return self._continuation()
        if line.startswith(b"* "):
            return self._untaggedLine(line)
        tag, _, rest = line.partition(b" ")
        kind = self._waiting.pop(tag, None)
        if kind is None:
            return self._fail(BackendUnavailable, f"unexpected backend line {logText(line)}")
        status, _, text = rest.partition(b" ")
        return getattr(self, "_reply" + kind)(status.upper(), text, rest)

    def _banner(self, line: bytes) -> list[Action]:
        if not line.startswith(b"* OK "):
            return self._fail(BackendUnavailable, f"invalid banner {logText(line)}")
        code, args, _ = _respCode(line[5:])
        if code == b"CAPABILITY":
            self._capabilities = _parseCapabilities(args)
            if not self._has(b"IMAP4REV1"):
                return self._fail(BackendUnavailable, f"banner lacks IMAP4rev1: {logText(line)}")
        return self._proceed()

    def _untaggedLine(self, line: bytes) -> list[Action]:
        word, _, rest = line[2:].partition(b" ")
        word = word.upper()
        code, args, _ = _respCode(rest) if word == b"OK" else (b"", b"", b"")
        if word == b"CAPABILITY":
            self._capabilities = _parseCapabilities(rest)
        elif code == b"CAPABILITY":
            # Dovecot's greeting after "* OK Waiting for authentication
            # process to respond..": what it offers, not news for the client.
            self._capabilities = _parseCapabilities(args)
        elif word == b"BYE":
            self._bye = line[6:]
        elif word != b"ID":
            self._untaggedSize += len(line)
            if self._untaggedSize > MAX_UNTAGGED:
                return self._fail(BackendUnavailable, "too many untagged backend lines")
            self._untagged.append(line)
        return []

    def _continuation(self) -> list[Action]:
        if self._continuations:
            return [Send(self._continuations.pop(0))]
        if self._authenticating:  # a second challenge PLAIN cannot answer
            return [Send(b"*\r\n")]
        return self._fail(BackendUnavailable, "unexpected continuation from backend")

    # Tagged replies

    def _replyID(self, status: bytes, text: bytes, line: bytes) -> list[Action]:
        code, _, _ = _respCode(text)
        if status == b"NO" and code == b"SERVERBUG":
            return self._fail(BackendMisconfigured, f"backend refused ID: {logText(text)}")
        return [] if self._login.pipelining else self._proceed()

    def _replySTARTTLS(self, status: bytes, text: bytes, line: bytes) -> list[Action]:
        if status != b"OK":
            return self._fail(BackendUnavailable, f"backend refused STARTTLS: {logText(text)}")
        if self._buffer or self._lineParts:  # CVE-2011-0411-style injection
            return self._fail(BackendUnavailable, "backend sent data after its STARTTLS reply")
        self._awaitingTLS = True
        return [StartTLS()]

    def _replyCAPABILITY(self, status: bytes, text: bytes, line: bytes) -> list[Action]:
        self.state = LOGIN
        if status != b"OK" or self._capabilities is None:
            return self._fail(BackendUnavailable, f"backend CAPABILITY failed: {logText(text)}")
        if not self._has(b"IMAP4REV1"):
            return self._fail(BackendUnavailable, "backend capabilities lack IMAP4rev1")
        return self._proceed()

    def _replyLOGIN(self, status: bytes, text: bytes, line: bytes) -> list[Action]:
        if status == b"OK":
            return self._loggedIn(text)
        code, args, _ = _respCode(text)
        if status == b"NO" and code == b"REFERRAL":
            return self._finish(BackendReferral(args.decode("utf-8", "replace")))
        if status != b"NO" or code in (b"", b"AUTHENTICATIONFAILED"):
            return self._finish(BackendAuthFailed(f"backend said {logText(line)}"))
        if code == b"UNAVAILABLE":
            return self._finish(BackendTempFail(line))
        if code == b"SERVERBUG":
            return self._fail(BackendMisconfigured, f"backend said {logText(line)}")
        return self._finish(BackendRefused(line))

    def _loggedIn(self, text: bytes) -> list[Action]:
        code, args, rest = _respCode(text)
        if code == b"CAPABILITY":
            capabilities = _parseCapabilities(args)
            response = b"OK " + text
        else:
            capabilities = tuple(
                c for c in self._capabilities or () if not c.upper().startswith(_PRE_LOGIN_ONLY)
            )
            response = (
                b"OK [CAPABILITY " + b" ".join(capabilities) + b"] " + (rest or b"Logged in")
            )
        leftover, self._buffer = bytes(self._buffer), bytearray()
        return self._finish(BackendLoggedIn(response, capabilities, leftover=leftover))

    # Output

    def _proceed(self) -> list[Action]:
        """Send what comes next, as far as we may without an answer."""
        if b"\0" in self._user + self._password + (self._master or b""):
            return self._finish(BackendAuthFailed("user name or password contains NUL"))
        if self._login.starttls and not self._tlsDone:
            if self._capabilities is not None and not self._has(b"STARTTLS"):
                return self._fail(BackendMisconfigured, "backend does not offer STARTTLS")
            self.state = STARTTLS_STATE
            return [Send(self._tag("STARTTLS") + b" STARTTLS\r\n")]
        if self._capabilities is None:  # after STARTTLS the state stays until a reply
            self.state = STARTTLS_STATE if self._login.starttls else LOGIN
            return [Send(self._tag("CAPABILITY") + b" CAPABILITY\r\n")]
        self.state = LOGIN
        if not self._tlsDone and self._has(b"LOGINDISABLED"):
            return self._fail(
                BackendMisconfigured, "backend says LOGINDISABLED on a plaintext link"
            )
        out = b""
        if self._login.idFields is not None and self._has(b"ID") and not self._idSent:
            self._idSent = True
            out = self._tag("ID") + b" ID " + self._idList(self._login.idFields) + b"\r\n"
            if not self._login.pipelining:
                return [Send(out)]
        pieces = self._loginPieces()
        self._continuations = pieces[1:]
        return [Send(out + pieces[0])]

    def _tag(self, kind: str) -> bytes:
        """A fresh tag for a command whose reply C{_reply<kind>} handles."""
        self._tags += 1
        tag = b"P%d" % self._tags
        self._waiting[tag] = kind
        return tag

    def _idList(self, fields: tuple[tuple[str, str], ...]) -> bytes:
        """C{(name value ...)}, quoted; fields that cannot be are left out."""
        items = []
        for name, value in fields:
            rawName, rawValue = name.encode(), value.encode()
            if len(rawName) <= _MAX_ID_NAME and len(rawValue) <= _MAX_ID_VALUE:
                if _quotable(rawName) and _quotable(rawValue):
                    items.append(quoted(rawName) + b" " + quoted(rawValue))
        return b"(" + b" ".join(items) + b")"

    def _loginPieces(self) -> list[bytes]:
        """
        The login command, split where it must wait for a C{+}: the first
        piece goes now, each next one on a continuation.
        """
        if self._master is not None:
            self._authenticating = True
            plain = b"\0".join((self._user, self._master, self._password))
            response = base64.b64encode(plain)
            command = self._tag("LOGIN") + b" AUTHENTICATE PLAIN"
            if self._has(b"SASL-IR"):
                return [command + b" " + response + b"\r\n"]
            return [command + b"\r\n", response + b"\r\n"]
        pieces = [self._tag("LOGIN") + b" LOGIN"]
        for value in (self._user, self._password):
            if _quotable(value):
                pieces[-1] += b" " + quoted(value)
            elif self._has(b"LITERAL+") or (
                self._has(b"LITERAL-") and len(value) <= _LITERAL_MINUS_MAX
            ):
                pieces[-1] += b" {%d+}\r\n%s" % (len(value), value)
            else:
                pieces[-1] += b" {%d}\r\n" % len(value)
                pieces.append(value)
        pieces[-1] += b"\r\n"
        return pieces

    # Results

    def _has(self, capability: bytes) -> bool:
        return any(c.upper() == capability.upper() for c in self._capabilities or ())

    def _fail(
        self, kind: type[BackendUnavailable | BackendMisconfigured], cause: str
    ) -> list[Action]:
        return self._finish(kind(self.state, cause))

    def _finish(self, result: BackendResult) -> list[Action]:
        """The end: forget the credentials (as Dovecot's proxy_free_password)."""
        self.finished = True
        self._continuations.clear()
        self._password = self._master = b""
        self._login = attrs.evolve(self._login, password="")
        self._buffer = bytearray()
        return [attrs.evolve(result, untagged=tuple(self._untagged))]
