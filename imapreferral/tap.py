"""
C{twistd imapreferral}: command-line strings to objects, no rules.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application import strports
from twisted.application.service import IService, MultiService
from twisted.cred.portal import Portal
from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.python import usage

from imapreferral.imap.account import ReferralRealm
from imapreferral.imap.factory import REFERRAL_AUTH_CHOICES, ReferralServerFactory
from imapreferral.login.attempt import DEFAULT_FAILURE_DELAY
from imapreferral.login.checker import PassdbChecker
from imapreferral.passdbs import PassdbConfigError, passdbFromString
from imapreferral.passdbs.sql import DEFAULT_TIMEOUT

_log = Logger()

EXAMPLES = os.path.join(os.path.dirname(__file__), "examples")
EXAMPLE_PASSWD = os.path.join(EXAMPLES, "users.passwd")
EXAMPLE_SQL = os.path.join(EXAMPLES, "dovecot-sql.conf.ext")
DEFAULT_PASSDBS = ("passwd-file:" + EXAMPLE_PASSWD, "sql:" + EXAMPLE_SQL)
DEFAULT_LISTEN = "tcp:1143:interface=127.0.0.1:backlog=512"


def _secondsFor(option: str, low: float) -> Any:
    def parse(value: str) -> float:
        try:
            seconds = float(value)
        except ValueError:
            raise usage.UsageError(f"--{option} {value!r}: not a number") from None
        if not low <= seconds <= 3600:
            raise usage.UsageError(f"--{option} {value!r}: must be {low:g}..3600 seconds")
        return seconds

    return parse


_delay = _secondsFor("auth-failure-delay", 0)
_seconds = _secondsFor("passdb-timeout", 0.1)


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "An IMAP4 server that answers logins with RFC 2221 login referrals from "
        "Dovecot-style passdbs. With no options it serves the bundled example "
        f"passwd-file and SQLite passdb on {DEFAULT_LISTEN}."
    )
    optFlags = [
        [
            "keep-username-case",
            None,
            "Look users up as typed (Dovecot's default lower-cases: %Lu).",
        ],
    ]
    optParameters = [
        ["auth-failure-delay", None, DEFAULT_FAILURE_DELAY,
         "Seconds before a failed authentication is answered; 0 disables.", _delay],
        ["referral-auth", None, "mech",
         "What referral URLs put in ;AUTH=: 'mech' (the mechanism used) or '*'."],
        ["greeting", None, "imapreferral ready.", "Text of the * OK greeting."],
        ["passdb-timeout", None, DEFAULT_TIMEOUT,
         "Seconds to wait for a SQL database (connect, query) before a temporary failure.",
         _seconds],
    ]  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["passdb"] = []

    def opt_listen(self, description: str) -> None:
        """Listen on a Twisted server endpoint, e.g. tcp:1143:interface=127.0.0.1 (repeatable)."""
        from twisted.internet import reactor

        try:
            endpoints.serverFromString(reactor, description)
        except Exception as e:
            raise usage.UsageError(f"--listen {description!r}: {e}") from None
        self["listen"].append(description)

    def opt_passdb(self, description: str) -> None:
        """
        A passdb, consulted in order: passwd-file:PATH, static:FIELDS or
        sql:DOVECOT-SQL-CONF (repeatable).
        """
        self["passdb"].append(description)

    def postOptions(self) -> None:
        if self["referral-auth"] not in REFERRAL_AUTH_CHOICES:
            raise usage.UsageError(f"--referral-auth {self['referral-auth']!r}: use 'mech' or '*'")
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        descriptions = self["passdb"] or list(DEFAULT_PASSDBS)
        try:
            self["passdb"] = [
                passdbFromString(d, timeout=self["passdb-timeout"]) for d in descriptions
            ]
        except PassdbConfigError as e:
            # One clear line, not the usage text: the option is fine, the file is not.
            raise SystemExit(f"imapreferral: {e}") from None


class ReferralService(MultiService):
    """The listeners, and one log line at start saying what is served."""

    def __init__(self, description: str) -> None:
        super().__init__()
        self.description = description

    def startService(self) -> None:
        _log.info("imapreferral serving {description}", description=self.description)
        super().startService()


def makeService(config: Any) -> IService:
    checker = PassdbChecker(config["passdb"], lowercaseUsernames=not config["keep-username-case"])
    factory = ReferralServerFactory(
        Portal(ReferralRealm(), [checker]),
        failureDelay=config["auth-failure-delay"],
        referralAuth=config["referral-auth"],
        greeting=config["greeting"],
    )
    service = ReferralService(
        f"{', '.join(config['listen'])} with passdbs "
        + ", ".join(repr(p) for p in config["passdb"])
    )
    for passdb in config["passdb"]:
        if IService.providedBy(passdb):  # e.g. SQL: a connection pool to start and stop
            passdb.setServiceParent(service)
    for description in config["listen"]:
        strports.service(description, factory).setServiceParent(service)
    return service
