"""
What one authentication log line costs.

Calls the login core's ``logAuthentication`` in a loop (timeit, best of 25
runs of 20,000) for a referral and for a failure, with logging begun as
twistd begins it: to Twisted's text file observer (writing to /dev/null),
or with ``--observer none`` to no observer at all (our own work and
``Logger.emit``).

    .venv/bin/python benchmarks/log_line.py
    .venv/bin/python benchmarks/log_line.py --observer none

Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import timeit

from twisted.logger import globalLogBeginner, textFileLogObserver

from imapreferral.imap.responses import referralURL
from imapreferral.login.context import LoginContext
from imapreferral.login.credentials import PasswordCredentials
from imapreferral.login.logline import logAuthentication
from imapreferral.login.outcome import Refer, Referral, Reject


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--observer", choices=("file", "none"), default="file")
    parser.add_argument("--number", type=int, default=20000)
    args = parser.parse_args()
    observers = [textFileLogObserver(open(os.devnull, "w"))] if args.observer == "file" else []
    globalLogBeginner.beginLoggingTo(observers, redirectStandardIO=False)
    context = LoginContext("127.0.0.1", 50000, "127.0.0.1", 1143, "PLAIN", False)
    credentials = PasswordCredentials(b"refnl", b"pass", context)
    outcomes = {"referred": Refer(Referral("refnl", "imap2.example.com")), "failed": Reject()}
    for name, outcome in outcomes.items():
        best = min(
            timeit.repeat(
                lambda outcome=outcome: logAuthentication(outcome, credentials, referralURL),
                number=args.number,
                repeat=25,
            )
        )
        print(f"{name:9} {best / args.number * 1e6:6.2f} us per line ({args.observer} observer)")


if __name__ == "__main__":
    main()
