"""
C{--log-format json}: one JSON object per line, for log shippers.

Every line has the same keys (L{KEYS}); a key that does not apply to a line
is C{null}. Our login and proxy events carry their fields apart (see
L{imapreferral.login.logline} and L{imapreferral.imap.proxying.logProxy}),
so nothing is parsed back out of text; any other event (start-up lines,
Twisted's own) still gets the fixed keys, with its words in C{text}. Client
values are escaped by the JSON encoder alone (C{ensure_ascii}: controls,
line separators and bidi controls become C{\\uXXXX}), so no value can end
its line or start another.

twistd picks the log observer after the service is made: L{installIn}
hands ours to twistd as the application's C{ILogObserver}, writing where
twistd would have written text (C{--logfile}, C{-} or stdout with
C{--nodaemon}; C{twistd.log} otherwise, rotated on C{SIGUSR1} as twistd
does). twistd's own C{--logger} still wins over it.
"""

from __future__ import annotations

import json
import signal
import sys
from datetime import datetime, timezone
from typing import IO, Any

from twisted.logger import FileLogObserver, ILogObserver, eventAsText
from twisted.python import logfile

#: The keys of every line, in this order.
KEYS = (
    "time",
    "level",
    "event",
    "session",
    "user",
    "remote",
    "local",
    "mechanism",
    "tls",
    "client",
    "outcome",
    "referral",
    "backend",
    "duration_ms",
    "namespace",
    "text",
)

#: Event fields that hold a key's value, where their names differ.
_FROM = {"outcome": "result", "duration_ms": "durationMs", "namespace": "log_namespace"}


def jsonLine(event: dict[str, Any]) -> str:
    """One event as one line of JSON, ending in a newline."""
    when = event.get("log_time")
    level = event.get("log_level")
    line: dict[str, object] = {
        "time": None
        if when is None
        else datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="milliseconds"),
        "level": None if level is None else level.name,
        "event": event.get("event") or "message",
    }
    for key in KEYS[3:-1]:
        value = event.get(_FROM.get(key, key))
        line[key] = value if isinstance(value, str | int | float | bool) else None
    line["text"] = eventAsText(event, includeTimestamp=False, includeSystem=False)
    return json.dumps(line, ensure_ascii=True, separators=(",", ":")) + "\n"


def jsonFileLogObserver(outFile: IO[str]) -> FileLogObserver:
    """An observer writing L{jsonLine}s to C{outFile}."""
    return FileLogObserver(outFile, jsonLine)


def twistdLogFile(serverOptions: Any) -> IO[str]:
    """
    Where twistd would write its text log, from its own options (as
    C{twisted.scripts._twistd_unix.UnixAppLogger} decides it).
    """
    if serverOptions is None:
        return sys.stdout
    name = serverOptions.get("logfile")
    nodaemon = serverOptions.get("nodaemon")
    if name == "-" or (nodaemon and not name):
        return sys.stdout
    opened = logfile.LogFile.fromFullPath(name or "twistd.log")
    if not signal.getsignal(signal.SIGUSR1):

        def rotate(signum: int, frame: object) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(opened.rotate)  # type: ignore[attr-defined]

        signal.signal(signal.SIGUSR1, rotate)
    return opened


def installIn(application: Any, serverOptions: Any) -> None:
    """Make twistd log C{application}'s events as JSON lines."""
    application.setComponent(ILogObserver, jsonFileLogObserver(twistdLogFile(serverOptions)))
