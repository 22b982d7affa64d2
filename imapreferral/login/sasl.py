"""
SASL mechanisms as sans-IO steps: bytes in, a challenge or credentials out.

The mechanism classes only know their message formats (RFC 4616 PLAIN,
the LOGIN draft, RFC 2195 CRAM-MD5); L{SASLExchange} adds the base64 and
the client's cancel that IMAP C{AUTHENTICATE} and POP3 C{AUTH} share, so
the protocol layer only writes the continuation lines and the replies.
"""

from __future__ import annotations

import binascii
import os
import time
from base64 import b64decode
from typing import ClassVar, Protocol

import attrs

from imapreferral.login.context import LoginContext
from imapreferral.login.credentials import CramMD5Credentials, PasswordCredentials
from imapreferral.login.outcome import AuthorizationRefused


class SASLError(ValueError):
    """The client's SASL message is malformed; the text is safe to show."""


@attrs.frozen
class Challenge:
    """Send C{data} to the client and wait for its next response."""

    data: bytes


class SASLMechanism(Protocol):
    """
    One server-side SASL exchange. Constructed per AUTHENTICATE with the
    login context and the server's host name (for CRAM-MD5's challenge).
    """

    name: ClassVar[str]
    allowsInitialResponse: ClassVar[bool]
    context: LoginContext

    def initial(self) -> Challenge:
        """The first challenge, when the client sent no initial response."""

    def step(
        self, response: bytes
    ) -> Challenge | PasswordCredentials | CramMD5Credentials | AuthorizationRefused:
        """
        Take the client's (decoded) response: another challenge, the
        credentials to log in with, or (PLAIN naming another authorization
        identity) the outcome L{AuthorizationRefused}.

        @raise SASLError: the response is malformed.
        """


class PlainMechanism:
    """RFC 4616: C{[authzid] NUL authcid NUL passwd} in one message."""

    name = "PLAIN"
    allowsInitialResponse = True

    def __init__(self, context: LoginContext, hostname: str = "") -> None:
        self.context = context

    def initial(self) -> Challenge:
        return Challenge(b"")

    def step(self, response: bytes) -> Challenge | PasswordCredentials | AuthorizationRefused:
        parts = response.split(b"\0")
        if len(parts) != 3 or not parts[1]:
            raise SASLError("Invalid PLAIN response.")
        authzid, authcid, password = parts
        if authzid and authzid != authcid:
            return AuthorizationRefused(
                authcid.decode("utf-8", "surrogateescape"),
                authzid.decode("utf-8", "surrogateescape"),
            )
        return PasswordCredentials(authcid, password, self.context)


class LoginMechanism:
    """The LOGIN mechanism: user name, then password, as Dovecot prompts."""

    name = "LOGIN"
    allowsInitialResponse = True

    def __init__(self, context: LoginContext, hostname: str = "") -> None:
        self.context = context
        self._username: bytes | None = None

    def initial(self) -> Challenge:
        return Challenge(b"Username:")

    def step(self, response: bytes) -> Challenge | PasswordCredentials:
        if self._username is None:
            if not response or b"\0" in response:
                raise SASLError("Invalid LOGIN user name.")
            self._username = response
            return Challenge(b"Password:")
        return PasswordCredentials(self._username, response, self.context)


class CramMD5Mechanism:
    """RFC 2195: the server's challenge, then C{user SP hex-digest}."""

    name = "CRAM-MD5"
    allowsInitialResponse = False

    def __init__(self, context: LoginContext, hostname: str = "") -> None:
        hostname = hostname or "imapreferral"
        self.context = context
        nonce = int.from_bytes(os.urandom(8), "big")
        self.challenge = f"<{nonce}.{int(time.time())}@{hostname}>".encode("ascii")

    def initial(self) -> Challenge:
        return Challenge(self.challenge)

    def step(self, response: bytes) -> Challenge | CramMD5Credentials:
        username, sep, digest = response.rpartition(b" ")
        if not sep or not username or len(digest) != 32:
            raise SASLError("Invalid CRAM-MD5 response.")
        try:
            int(digest, 16)
        except ValueError:
            raise SASLError("Invalid CRAM-MD5 response.") from None
        return CramMD5Credentials(username, self.challenge, digest, self.context)


MECHANISMS: dict[str, type[SASLMechanism]] = {
    m.name: m for m in (PlainMechanism, LoginMechanism, CramMD5Mechanism)
}


@attrs.frozen
class SASLFailed:
    """The exchange ends with a syntax error; C{text} is safe to show (as IMAP C{BAD})."""

    text: str


SASLStep = Challenge | PasswordCredentials | CramMD5Credentials | AuthorizationRefused | SASLFailed


def decodeBase64(data: bytes, initial: bool = False) -> bytes | None:
    """
    Strict base64 (RFC 4648), or L{None}. An initial response (RFC 4959)
    of C{=} is empty.
    """
    if initial and data == b"=":
        return b""
    try:
        return b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


class SASLExchange:
    """
    One server-side SASL exchange, sans IO: the client's base64 lines in,
    the next L{SASLStep} out (send the L{Challenge} base64-encoded and
    feed the answer to L{respond}; anything else ends the exchange).
    """

    def __init__(self, mechanism: SASLMechanism) -> None:
        self.mechanism = mechanism

    def begin(self, initialResponse: bytes | None) -> SASLStep:
        """Start, with the client's initial response (RFC 4959) if it sent one."""
        if initialResponse is None:
            return self.mechanism.initial()
        if not self.mechanism.allowsInitialResponse:
            return SASLFailed("This mechanism does not take an initial response.")
        data = decodeBase64(initialResponse, initial=True)
        if data is None:
            return SASLFailed("Invalid base64 data in initial response.")
        return self._step(data)

    def respond(self, line: bytes) -> SASLStep:
        """The client's answer to a challenge: base64, or C{*} to cancel."""
        line = line.strip()
        if line == b"*":
            return SASLFailed("Authentication aborted by client.")
        data = decodeBase64(line)
        if data is None:
            return SASLFailed("Invalid base64 data in continued response.")
        return self._step(data)

    def _step(self, data: bytes) -> SASLStep:
        try:
            return self.mechanism.step(data)
        except SASLError as e:
            return SASLFailed(str(e))
