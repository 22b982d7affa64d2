"""
C{imapreferral config check}: what a parsed server configuration would
serve, in lines for a person.

The values come from the objects the server would run with (the parsed
options and the factory L{imapreferral.tap.makeService} builds, so the
mechanisms offered are the server's own choice), not from the strings
given. A problem start-up accepts but clients would not (an expired
certificate) is reported apart (L{ConfigReport.problems}).
"""

from __future__ import annotations

import datetime
from typing import Any

import attrs
from cryptography import x509
from cryptography.x509.oid import NameOID

from imapreferral import __version__, tap
from imapreferral.authplugins import AuthChecker
from imapreferral.authtest import ServerParts, formatFields, replyFields
from imapreferral.listeners import SYSTEMD_PREFIX


def _networks(networks: Any) -> str:
    return " ".join(str(n) for n in networks.networks) or "none"


def _listener(listener: Any, config: Any) -> str:
    kind = "implicit TLS" if listener.option == "listen-tls" else "plain"
    if listener.option == "listen" and config["tls"] is not None:
        kind += ", STARTTLS"
    if listener.endpoint.startswith(SYSTEMD_PREFIX):
        kind += ", the socket systemd passes"
    if listener.proxied:
        kind += ", PROXY headers from " + _networks(config["haproxy-trusted-networks"])
    return f"listener: {listener.shown[2:]} ({kind})"


def _certificate(path: str, now: datetime.datetime) -> tuple[list[str], list[str]]:
    """
    The first certificate of C{path}: subject, names, expiry; and the
    problems every client will see (expired, not valid yet).
    """
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
    notAfter = certificate.not_valid_after_utc
    notBefore = certificate.not_valid_before_utc
    problems = []
    if notAfter < now:
        validity = f"EXPIRED {_when(notAfter)}"
        problems.append(f"--tls-cert {path}: expired {_when(notAfter)}: TLS clients refuse it")
    elif notBefore > now:
        validity = f"NOT VALID BEFORE {_when(notBefore)}, expires {_when(notAfter)}"
        problems.append(
            f"--tls-cert {path}: not valid before {_when(notBefore)}: TLS clients refuse it"
        )
    else:
        validity = f"expires {_when(notAfter)}"
    line = (
        f"TLS certificate: {path}: {common}"
        + (f", names {' '.join(names)}" if names else "")
        + f", {validity}"
    )
    return [line], problems


def _when(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


@attrs.frozen
class ConfigReport:
    """
    What C{config check} says: the lines for stdout, and the problems
    start-up does not refuse but every client would meet (an expired
    certificate), for stderr and a non-zero exit.
    """

    lines: tuple[str, ...]
    problems: tuple[str, ...] = ()


def _source(number: int, source: Any) -> str:
    kind = "checker" if isinstance(source, AuthChecker) else "passdb"
    return f"{kind} {number}: {source!r}"


def describe(config: Any, now: datetime.datetime | None = None) -> ConfigReport:
    """What C{config check} reports for a parsed L{tap.Options}."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    workers = config["workers"]
    parts = ServerParts(config, tap.makeService)
    policy = parts.factory.policy
    lines = [_listener(listener, config) for listener in config["listeners"]]
    problems: list[str] = []
    if workers > 1:
        lines.append(f"workers: {workers} processes share the listeners")
    if config["tls-cert"] is not None:
        shown, problems = _certificate(config["tls-cert"], now)
        lines += shown
    else:
        lines.append("TLS: none (no --tls-cert): no STARTTLS, no implicit TLS")
    # --passdb and --auth in the order a login asks them.
    lines += [_source(i, source) for i, source in enumerate(config["sources"], 1)]
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
    verdict = "configuration OK" if not problems else "configuration NOT OK (see stderr)"
    return ConfigReport((f"imapreferral {__version__}: {verdict}", *lines), tuple(problems))
