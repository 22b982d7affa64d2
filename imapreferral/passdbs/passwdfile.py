"""
Dovecot's passwd-file passdb:
C{user:password:uid:gid:gecos:home:shell:extra_fields}.

Only the user, the password and the extra fields matter for login; the
extra fields are the rest of the line after the seventh colon, so values
with colons (C{host=2001:db8::1}) work. The file is re-read when it
changes on disk (at most one C{stat} a second) and at once on C{SIGHUP}; a
broken new version is logged and the last good one kept.

Stricter than Dovecot, which reads a line without C{:} as a user without a
password and, as a passdb, never looks at uid or gid: a line that lost a
colon (C{u:{PLAIN}pw:host=h nologin}) then logs the user in here with no
referral. We refuse such lines at start-up, naming file and line (see
L{_checkColumns}). uid and gid may still be names, which Dovecot's userdb
resolves with C{getpwnam}, so a file shared with Dovecot keeps working.
"""

from __future__ import annotations

import os
import re

from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from imapreferral.interfaces import IPassdb
from imapreferral.login.context import LoginContext
from imapreferral.login.fields import (
    FLAG_FIELDS,
    KNOWN_FIELDS,
    FieldError,
    PassdbReply,
    splitExtraFields,
)
from imapreferral.passwords import allowsCramMD5
from imapreferral.reload import IReloadable

_log = Logger()


class PasswdFileError(ValueError):
    """A passwd-file that cannot be used; the message names file and line."""


#: A system user or group name, as Dovecot's userdb accepts for uid and gid
#: (C{getpwnam}/C{getgrnam}); shadow-utils' rule, without the trailing C{$}
#: of machine accounts.
_ACCOUNT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9._-]*\Z")

_LAYOUT = "user:password:uid:gid:gecos:home:shell:extra_fields"


def _extraFieldIn(text: str, flags: bool) -> str | None:
    """
    The first thing in C{text} that is a passdb extra field we act on
    (C{host=...}, C{userdb_...=}; with C{flags}, also text made only of
    flags such as C{nologin}), or L{None}.
    """
    tokens = text.split()
    for token in tokens:
        key, sep, _ = token.partition("=")
        key = key.lower()
        if sep and (key in KNOWN_FIELDS or key.startswith("userdb_")):
            return key + "="
    if flags and tokens and all(token.lower() in FLAG_FIELDS for token in tokens):
        return tokens[0]
    return None


def _checkColumns(parts: list[str]) -> None:
    """
    Refuse a line whose columns are not what they seem: extra fields land in
    the wrong column when colons are missing (C{u:{PLAIN}pw:host=h nologin}
    puts them in uid, and the user would log in here with no referral).

      - password (without C{{SCHEME}}): not extra fields or flags;
      - uid, gid: empty, a number, or a user/group name that is no flag;
      - gecos: free text, but no C{key=value} field we act on;
      - home, shell: paths, neither fields nor flags.

    @raise ValueError: naming the column (never the password's value).
    """
    password = parts[1] if len(parts) > 1 else ""
    if not password.startswith("{"):
        found = _extraFieldIn(password, flags=True)
        if found is not None:
            raise ValueError(
                f"the password column holds extra fields ({found}...): "
                f"is a ':' missing? ({_LAYOUT})"
            )
    for column, value in zip(("uid", "gid", "gecos", "home", "shell"), parts[2:7], strict=False):
        if _extraFieldIn(value, flags=column != "gecos") is not None:
            raise ValueError(
                f"{column} {value!r} holds extra fields: is a ':' missing? ({_LAYOUT})"
            )
        if column in ("uid", "gid") and value and not _isAccount(value):
            owner = "user" if column == "uid" else "group"
            raise ValueError(f"{column} {value!r} is not a number or a {owner} name")


def _isAccount(value: str) -> bool:
    return (value.isascii() and value.isdigit()) or _ACCOUNT_NAME.match(value) is not None


def parsePasswdLine(line: str) -> tuple[str, PassdbReply] | None:
    """
    Parse one line: C{None} for a blank line or C{#} comment, else the user
    name and its reply.

    @raise ValueError: with a message saying what is wrong.
    """
    text = line.strip("\r\n")
    if not text.strip() or text.lstrip().startswith("#"):
        return None
    if ":" not in text:
        raise ValueError(f"no ':' in the line ({_LAYOUT})")
    parts = text.split(":", 7)
    user = parts[0]
    if not user:
        raise ValueError("empty user name")
    _checkColumns(parts)
    password = parts[1] if parts[1] != "" else None
    extra = parts[7] if len(parts) == 8 else ""
    try:
        return user, PassdbReply.fromFields(splitExtraFields(extra), password=password)
    except FieldError as e:
        raise ValueError(str(e)) from None


def parsePasswdFile(path: str, data: bytes) -> dict[str, PassdbReply]:
    """
    Parse a whole file.

    @raise PasswdFileError: C{"path:line: what is wrong"} for the first bad line.
    """
    users: dict[str, PassdbReply] = {}
    for number, raw in enumerate(data.split(b"\n"), 1):
        try:
            parsed = parsePasswdLine(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise PasswdFileError(f"{path}:{number}: not valid UTF-8") from None
        except ValueError as e:
            raise PasswdFileError(f"{path}:{number}: {e}") from None
        if parsed is None:
            continue
        user, reply = parsed
        if user in users:
            raise PasswdFileError(f"{path}:{number}: user {user!r} is listed twice")
        users[user] = reply
    return users


def _signature(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _load(path: str) -> tuple[dict[str, PassdbReply], tuple[int, int, int]]:
    """
    Read and parse the file: its users and its stat signature.

    @raise OSError: if it cannot be read.
    @raise PasswdFileError: for a bad line.
    """
    st = os.stat(path)
    with open(path, "rb") as f:
        data = f.read()
    return parsePasswdFile(path, data), _signature(st)


@implementer(IPassdb, IReloadable)
class PasswdFilePassdb:
    """
    @ivar path: The file. Read at construction: a missing, unreadable or
        malformed file raises L{PasswdFileError} then, so the server refuses
        to start.
    """

    def __init__(self, path: str, clock: IReactorTime | None = None, recheck: float = 1.0) -> None:
        """
        @param clock: When to look at the file again; the reactor if L{None}.
        @param recheck: Look at most this often (seconds) for changes; 0
            looks on every lookup. One C{stat} a second, not one a login.
        """
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[assignment]
        self.path = path
        self._clock = clock
        self._recheck = recheck
        try:
            st = os.stat(path)
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise PasswdFileError(f"{path}: cannot read passwd-file: {e.strerror}") from None
        self._users = parsePasswdFile(path, data)
        self._signature = _signature(st)
        self._problem: str | None = None
        self._reloads = DeferredLock()  # one re-read at a time, in order
        self._checked = self._clock.seconds()

    def __repr__(self) -> str:
        return f"<PasswdFilePassdb {self.path}>"

    def _refresh(self) -> Deferred[None] | None:
        """
        If the file changed since the last look (one C{stat} a second at
        most, on the reactor: cheap), re-read it in a thread: a file of
        100,000 users takes a second to parse, which no other login waits
        for. L{None} if it did not change; else a Deferred that fires once
        the new version (or, if it is broken, the old one) is in use.
        """
        now = self._clock.seconds()
        if now - self._checked < self._recheck:
            return None
        self._checked = now
        try:
            if _signature(os.stat(self.path)) == self._signature:
                return None
        except OSError as e:
            self._keep(e, always=False)
            return None
        reread = self._reloads.run(self._reloadOnce, False)
        inUse: Deferred[None] = Deferred()  # cancelling a login must not cancel the re-read
        reread.addErrback(lambda f: _log.failure("re-reading {path} failed", f, path=self.path))
        reread.addBoth(lambda _: inUse.callback(None))
        return inUse

    def reload(self) -> Deferred[None]:
        """
        C{SIGHUP} (L{imapreferral.reload.IReloadable}): re-read the file
        now, changed or not, and say so; a broken file keeps the last good
        version, in one log line. Read and parsed in a thread: a file of
        100,000 users takes seconds, which the reactor does not wait for.
        """
        self._checked = self._clock.seconds()
        return self._reloads.run(self._reloadOnce)

    def _reloadOnce(self, always: bool = True) -> Deferred[None]:
        d = deferToThread(_load, self.path)
        d.addCallbacks(self._use, self._failedReload, errbackArgs=(always,))
        return d

    def _failedReload(self, failure: Failure, always: bool) -> None:
        failure.trap(OSError, PasswdFileError)
        self._keep(failure.value, always=always)

    def _keep(self, error: BaseException, always: bool) -> None:
        """Log why the new file is not used: once per problem, or C{always} (on a signal)."""
        if isinstance(error, PasswdFileError):
            problem = str(error)
        else:
            problem = f"{self.path}: {getattr(error, 'strerror', error)}"
        if problem != self._problem or always:
            _log.error("keeping the last good passwd-file: {problem}", problem=problem)
            self._problem = problem

    def _use(self, loaded: tuple[dict[str, PassdbReply], tuple[int, int, int]]) -> None:
        self._users, self._signature = loaded
        self._problem = None
        _log.info("re-read {path}: {count} users", path=self.path, count=len(self._users))

    def lookup(self, username: str, context: LoginContext) -> Deferred[PassdbReply | None]:
        changed = self._refresh()
        if changed is None:
            return succeed(self._users.get(username))
        return changed.addCallback(lambda _: self._users.get(username))

    def canProvidePlaintext(self) -> bool:
        return any(
            r.password is not None and allowsCramMD5(r.password) for r in self._users.values()
        )
