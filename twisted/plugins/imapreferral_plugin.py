"""twistd plugin: C{twistd imapreferral}. Import-light: options load lazily."""

from twisted.application.service import ServiceMaker

imapreferral = ServiceMaker(
    "imapreferral",
    "imapreferral.tap",
    "IMAP4 server answering logins with RFC 2221 login referrals",
    "imapreferral",
)
