"""
C{imapreferral config check}: what a parsed server configuration would
serve, in lines for a person.

The values come from the objects the server would run with (the parsed
options and the factory L{imapreferral.tap.makeService} builds, so the
mechanisms offered are the server's own choice), not from the strings
given.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from imapreferral import __version__, tap
from imapreferral.authtest import ServerParts, formatFields, replyFields


def _networks(networks: Any) -> str:
    return " ".join(str(n) for n in networks.networks) or "none"


def _listener(listener: Any, config: Any) -> str:
    kind = "implicit TLS" if listener.option == "listen-tls" else "plain"
    if listener.option == "listen" and config["tls"] is not None:
        kind += ", STARTTLS"
    if listener.proxied:
        kind += ", PROXY headers from " + _networks(config["haproxy-trusted-networks"])
    return f"listener: {listener.shown[2:]} ({kind})"


def _certificate(path: str) -> list[str]:
    """The first certificate of C{path}: subject, names, expiry."""
    with open(path, "rb") as f:
        certificate = x509.load_pem_x509_certificate(f.read())
    subject = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    names: list[str] = []
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = [str(n) for n in extension.value.get_values_for_type(x509.DNSName)]
        names += [str(n) for n in extension.value.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        pass
    common = str(subject[0].value) if subject else "(no common name)"
    expires = certificate.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"TLS certificate: {path}: {common}"
        + (f", names {' '.join(names)}" if names else "")
        + f", expires {expires}"
    ]


def describe(config: Any) -> list[str]:
    """The lines C{config check} prints for a parsed L{tap.Options}."""
    workers = config["workers"]
    parts = ServerParts(config, tap.makeService)
    policy = parts.factory.policy
    lines = [f"imapreferral {__version__}: configuration OK"]
    lines += [_listener(listener, config) for listener in config["listeners"]]
    if workers > 1:
        lines.append(f"workers: {workers} processes share the listeners")
    if config["tls-cert"] is not None:
        lines += _certificate(config["tls-cert"])
    else:
        lines.append("TLS: none (no --tls-cert): no STARTTLS, no implicit TLS")
    lines += [f"passdb {i}: {passdb!r}" for i, passdb in enumerate(config["passdb"], 1)]
    if policy.greetingReferral is not None:
        lines.append(f"greeting referral: every connection is sent to {policy.greetingReferral}")
    lines.append("mechanisms: " + " ".join(policy.mechanisms))
    if policy.plaintextAuth == "secure":
        where = "over TLS or from trusted networks " + _networks(policy.trustedNetworks)
    else:
        where = "everywhere, TLS or not"
    lines.append(f"plaintext logins: {where}")
    lines.append(
        f"limits: {config['max-connections'] or 'no'} connections, "
        f"{config['max-connections-per-ip'] or 'no limit of'} per address, "
        f"{config['max-auth-failures']} failed logins per connection; "
        f"failures answered after {config['auth-failure-delay']:g} s, "
        f"repeated ones up to {config['auth-penalty-cap']:g} s"
    )
    if policy.localBackend is not None:
        lines.append("local backend: " + formatFields(replyFields(policy.localBackend)))
    return lines
