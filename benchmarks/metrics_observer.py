"""
What ``--metrics`` adds to one login: the metrics log observer counting the
login line, and a scrape.

Calls ``logAuthentication`` for a referral in a loop (timeit, best of 25
runs of 20,000 each way) with logging begun as twistd begins it (Twisted's
text file observer writing to /dev/null), without and with the metrics
observer, in turn, so that a change in the machine's load hits both;
with ``--workers`` the metrics are in prometheus_client's multiprocess mode
(values written to mmap'ed files in a temporary directory). Then times one
``/metrics`` text (``generate_latest``) of that registry.

    .venv/bin/python benchmarks/metrics_observer.py
    .venv/bin/python benchmarks/metrics_observer.py --workers

Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import timeit

from prometheus_client import generate_latest
from twisted.cred.portal import Portal
from twisted.internet.task import Clock
from twisted.logger import globalLogBeginner, globalLogPublisher, textFileLogObserver

from imapreferral.imap.account import ReferralRealm
from imapreferral.imap.factory import ReferralServerFactory
from imapreferral.imap.responses import referralURL
from imapreferral.login.checker import PassdbChecker
from imapreferral.login.context import LoginContext
from imapreferral.login.credentials import PasswordCredentials
from imapreferral.login.logline import logAuthentication
from imapreferral.login.outcome import Refer, Referral
from imapreferral.metrics import ServerMetrics
from imapreferral.passwords import SchemeVerifier
from imapreferral.testing import MemoryPassdb


def perLine(number: int, observer: object) -> tuple[float, float]:
    """Microseconds per login line, best of 25: without C{observer}, with it."""
    context = LoginContext("127.0.0.1", 50000, "127.0.0.1", 1143, "PLAIN", False)
    credentials = PasswordCredentials(b"refnl", b"pass", context)
    outcome = Refer(Referral("refnl", "imap2.example.com"))
    timer = timeit.Timer(lambda: logAuthentication(outcome, credentials, referralURL, 0.001))
    without, with_ = [], []
    for _ in range(25):
        without.append(timer.timeit(number))
        globalLogPublisher.addObserver(observer)
        with_.append(timer.timeit(number))
        globalLogPublisher.removeObserver(observer)
    return min(without) / number * 1e6, min(with_) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", action="store_true", help="multiprocess mode")
    parser.add_argument("--number", type=int, default=20000)
    args = parser.parse_args()
    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(open(os.devnull, "w"))], redirectStandardIO=False
    )
    directory = tempfile.mkdtemp(prefix="metrics-bench-") if args.workers else None
    try:
        checker = PassdbChecker([MemoryPassdb.fromLines({})])
        factory = ReferralServerFactory(Portal(ReferralRealm(), [checker]), clock=Clock())
        metrics = ServerMetrics(factory, checker, SchemeVerifier(), directory)
        mode = "multiprocess" if directory else "one process"
        without, with_ = perLine(args.number, metrics.observe)
        print(f"without metrics  {without:6.2f} us per login line")
        print(f"with metrics     {with_:6.2f} us per login line ({mode})")
        scrape = min(timeit.repeat(lambda: generate_latest(metrics.registry), number=100))
        print(f"one /metrics text {scrape / 100 * 1e3:5.2f} ms ({mode})")
    finally:
        if directory is not None:
            shutil.rmtree(directory)


if __name__ == "__main__":
    main()
