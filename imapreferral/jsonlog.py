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

Where the lines go (the file twistd would write its text to, shared by
C{--workers}) is L{imapreferral.logfiles}'s business.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import IO, Any

from twisted.logger import FileLogObserver, eventAsText

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
