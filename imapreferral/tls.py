"""
TLS certificates for STARTTLS and implicit-TLS listeners, checked at
start-up: a missing file, a key that does not match its certificate, or a
file that is not PEM stops the server with a message naming the file.
L{ReloadableTLS} re-reads them on C{SIGHUP}.
"""

from __future__ import annotations

from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger
from zope.interface import implementer

from imapreferral.reload import IReloadable

_log = Logger()


class TLSConfigError(ValueError):
    """Unusable certificate or key; the message names the file."""


def _reason(error: Exception) -> str:
    """
    OpenSSL's reasons as words (C{key values mismatch}): pyOpenSSL's
    message is the repr of a list of C{(library, function, reason)} tuples.
    """
    reasons: list[str] = []
    for entry in error.args[0] if error.args and isinstance(error.args[0], list) else ():
        reason = entry[-1] if isinstance(entry, tuple) and entry else None
        if isinstance(reason, str) and reason and reason not in reasons:
            reasons.append(reason)
    return "; ".join(reasons) or type(error).__name__


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSConfigError(f"{path}: cannot read TLS {what}: {e.strerror}") from None


def _certificates(path: str, data: bytes) -> list[crypto.X509]:
    """Every certificate in a PEM file: the server's first, then its chain."""
    marker = b"-----BEGIN CERTIFICATE-----"
    blocks = [marker + block for block in data.split(marker)[1:]]
    if not blocks:
        raise TLSConfigError(f"{path}: no PEM certificate in the file")
    try:
        return [crypto.load_certificate(crypto.FILETYPE_PEM, block) for block in blocks]
    except crypto.Error as e:
        raise TLSConfigError(f"{path}: not a valid PEM certificate: {_reason(e)}") from None


def loadTLS(certPath: str, keyPath: str) -> CertificateOptions:
    """
    Load a PEM certificate (a chain may follow it in the same file) and its
    PEM private key into Twisted's C{CertificateOptions} (current TLS
    versions and ciphers), and make sure they fit.

    @raise TLSConfigError: naming the file at fault.
    """
    certs = _certificates(certPath, _read(certPath, "certificate"))
    keyData = _read(keyPath, "key")
    try:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, keyData)
    except crypto.Error as e:
        raise TLSConfigError(
            f"{keyPath}: not a valid unencrypted PEM private key: {_reason(e)}"
        ) from None
    options = CertificateOptions(
        privateKey=key.to_cryptography_key(),
        certificate=certs[0].to_cryptography(),
        extraCertChain=[c.to_cryptography() for c in certs[1:]],
    )
    try:
        options.getContext()
    except SSL.Error as e:
        raise TLSConfigError(
            f"{keyPath}: the key does not match the certificate {certPath}: {_reason(e)}"
        ) from None
    return options


@implementer(IOpenSSLContextFactory, IReloadable)
class ReloadableTLS:
    """
    The server's certificate and key, re-read on C{SIGHUP} (L{reload}).

    Listeners and STARTTLS ask for a context per connection
    (C{getContext}), so a renewed certificate is served to the next
    connection while open ones keep the one they negotiated. A new file
    that does not load (half-written, key not matching) keeps the current
    pair and logs one line.

    @ivar certPath: See L{loadTLS}.
    @ivar keyPath: See L{loadTLS}.
    @ivar options: The pair in use.
    """

    def __init__(self, certPath: str, keyPath: str) -> None:
        """@raise TLSConfigError: as L{loadTLS}, so the server refuses to start."""
        self.certPath = certPath
        self.keyPath = keyPath
        self.options = loadTLS(certPath, keyPath)

    def __repr__(self) -> str:
        return f"<ReloadableTLS {self.certPath}>"

    def getContext(self) -> SSL.Context:
        return self.options.getContext()

    def reload(self) -> None:
        try:
            options = loadTLS(self.certPath, self.keyPath)
        except TLSConfigError as e:
            _log.error("keeping the current TLS certificate: {problem}", problem=str(e))
            return
        self.options = options
        certificate = options.certificate
        _log.info(
            "re-read TLS certificate {path}: {subject}, valid until {until}",
            path=self.certPath,
            subject=certificate.subject.rfc4514_string(),
            until=certificate.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC"),
        )
