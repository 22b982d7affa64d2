"""
Dovecot's authentication cache (C{auth_cache_size}, C{auth_cache_ttl},
C{auth_cache_negative_ttl}) in front of any passdb.

The rules are those of Dovecot 2.3's C{src/auth/auth-cache.c} and
C{passdb-cache.c}:

  - An entry is the passdb's whole reply (the I{stored} password, a hash or
    whatever the passdb holds, and the fields); never the password a client
    sent. A login that hits the cache checks its password against the stored
    one and L{imapreferral.login.decision.decide} runs as for a fresh reply.
  - A user the passdb does not know is a negative entry, kept
    C{negativeTtl}; others are kept C{ttl} (both counted from when the
    passdb answered). A negative TTL of 0 caches no unknown users.
  - A wrong password against a cached entry is answered from the cache,
    unless the last login with that entry succeeded or the entry is older
    than the negative TTL: then the password may have changed, and the
    passdb is asked again (the entry is replaced, not evicted first).
  - When the passdb fails (the database is down), an expired entry is used
    all the same; a wrong password then fails as usual. This is logged
    once when it starts and once when the passdb answers again.
  - Memory is bounded like Dovecot's: C{maxSize} bytes, by an estimate of
    what each entry costs, the least recently used entry going first.
  - L{AuthCache.flush} empties it (C{SIGHUP}, see L{imapreferral.tap}).

The key is the passdb and what its answer depends on: the name alone, or
for a passdb providing L{IPassdbCacheKey} (SQL: the values of the query's
C{%variables}) those values, as Dovecot keys a SQL passdb by its query's
variables.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from imapreferral.interfaces import IPassdb, IPassdbCacheKey, IVerifyingPassdb
from imapreferral.login.context import LoginContext
from imapreferral.login.fields import PassdbReply
from imapreferral.logtext import oneLine
from imapreferral.reload import IReloadable

_log = Logger()

#: Dovecot's defaults: C{auth_cache_ttl} and C{auth_cache_negative_ttl} are
#: one hour, C{auth_cache_size} 0 (no cache).
DEFAULT_TTL = 3600.0
DEFAULT_NEGATIVE_TTL = 3600.0

#: What an entry costs besides its text, in bytes: the key tuple, the entry,
#: the reply object and the dictionary slot, as C{tracemalloc} measures
#: them for a reply with a handful of fields (test_cache checks the
#: estimate stays within a factor of two). Dovecot counts its C struct.
ENTRY_OVERHEAD = 900

Verify = Callable[[PassdbReply], Awaitable[bool]]


def _textSize(reply: PassdbReply | None) -> int:
    if reply is None:
        return 0
    values = attrs.astuple(reply, recurse=True)
    total = 0
    stack = list(values)
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            total += len(value)
        elif isinstance(value, tuple | list):
            stack.extend(value)
    return total


@attrs.define
class CacheEntry:
    """
    One cached answer.

    @ivar reply: The passdb's reply, or L{None} for a user it does not know
        (a negative entry).
    @ivar created: When the passdb gave it, on the cache's clock.
    @ivar size: Its estimated cost in bytes.
    @ivar lastSuccess: Whether the last password checked against it matched
        (Dovecot's C{last_success}).
    """

    reply: PassdbReply | None
    created: float
    size: int
    lastSuccess: bool = False


@implementer(IReloadable)
class AuthCache:
    """
    The entries of every cached passdb, least recently used first.

    @ivar maxSize: Bytes the entries may take (estimated), > 0.
    @ivar ttl: Seconds a positive entry is used without asking the passdb.
    @ivar negativeTtl: The same for negative entries, and the age after
        which a wrong password is checked with the passdb again; 0 caches
        no negative entries.
    @ivar hits: Lookups answered from a live entry.
    @ivar misses: Lookups that found no entry or an expired one.
    """

    def __init__(
        self,
        maxSize: int,
        ttl: float = DEFAULT_TTL,
        negativeTtl: float = DEFAULT_NEGATIVE_TTL,
        clock: IReactorTime | None = None,
    ) -> None:
        """
        @param clock: Tells the time; the reactor if L{None}.
        """
        if maxSize <= 0:
            raise ValueError("an auth cache needs a size above 0 (0 is no cache)")
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[assignment]
        self.maxSize = maxSize
        self.ttl = ttl
        self.negativeTtl = negativeTtl
        self._clock = clock
        self._entries: OrderedDict[Hashable, CacheEntry] = OrderedDict()
        self._used = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def used(self) -> int:
        """Estimated bytes the entries take."""
        return self._used

    def now(self) -> float:
        return self._clock.seconds()

    def peek(self, key: Hashable) -> CacheEntry | None:
        """The entry for C{key}, live or expired, without touching it."""
        return self._entries.get(key)

    def lookup(self, key: Hashable) -> tuple[CacheEntry | None, bool]:
        """
        The entry for C{key} and whether it has expired. A live entry
        becomes the most recently used (an expired one does not, as in
        Dovecot: only a failing passdb still reads it).
        """
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None, False
        if self.expired(entry):
            self.misses += 1
            return entry, True
        self._entries.move_to_end(key)
        self.hits += 1
        return entry, False

    def expired(self, entry: CacheEntry) -> bool:
        ttl = self.negativeTtl if entry.reply is None else self.ttl
        return self.now() - entry.created > ttl

    def pastNegativeTtl(self, entry: CacheEntry) -> bool:
        """Dovecot's C{neg_expired}: a wrong password is then checked with the passdb."""
        return self.now() - entry.created > self.negativeTtl

    def insert(
        self, key: Hashable, reply: PassdbReply | None, lastSuccess: bool = False
    ) -> CacheEntry | None:
        """
        Cache the passdb's answer for C{key}, replacing any entry, and drop
        the least recently used entries until it fits. L{None} (nothing
        cached) for a negative answer when the negative TTL is 0, or for an
        entry larger than the whole cache.
        """
        old = self._entries.pop(key, None)
        if old is not None:
            self._used -= old.size
        if reply is None and self.negativeTtl <= 0:
            return None
        size = ENTRY_OVERHEAD + len(repr(key)) + _textSize(reply)
        if size > self.maxSize:
            return None
        while self._used + size > self.maxSize:
            _, dropped = self._entries.popitem(last=False)
            self._used -= dropped.size
        entry = CacheEntry(reply, self.now(), size, lastSuccess)
        self._entries[key] = entry
        self._used += size
        return entry

    def flush(self) -> int:
        """Drop every entry (Dovecot does on C{SIGHUP}); how many there were."""
        count = len(self._entries)
        self._entries.clear()
        self._used = 0
        return count

    def reload(self) -> None:
        """L{IReloadable}: C{SIGHUP} flushes the cache, as Dovecot's auth process does."""
        _log.info("auth cache flushed: {count} entries", count=self.flush())


@implementer(IVerifyingPassdb)
class CachedPassdb:
    """
    A passdb behind an L{AuthCache}. The checker gives it the password check
    (L{lookupVerified}), since whether to ask the passdb again depends on
    it.

    @ivar passdb: The passdb asked on a miss.
    @ivar cache: The shared cache.
    @ivar name: Tells this passdb's entries from another's in the cache
        (Dovecot's passdb id).
    """

    def __init__(self, passdb: IPassdb, cache: AuthCache, name: str) -> None:
        self.passdb = passdb
        self.cache = cache
        self.name = name
        self._keyed = IPassdbCacheKey.providedBy(passdb)
        self._stale: str | None = None
        self._staleSince = 0.0
        self._staleAnswers = 0

    def __repr__(self) -> str:
        return f"{self.passdb!r} (auth cache)"

    def canProvidePlaintext(self) -> bool:
        return bool(self.passdb.canProvidePlaintext())

    def key(self, username: str, context: LoginContext) -> Hashable:
        if self._keyed:
            return (self.name, *self.passdb.cacheKey(username, context))  # type: ignore[attr-defined]
        return (self.name, username)

    def lookup(self, username: str, context: LoginContext) -> Deferred[PassdbReply | None]:
        """
        L{IPassdb.lookup} without a password to check (e.g. a user lookup
        by an administrator): a live entry, else the passdb's answer, else
        an expired entry if the passdb fails.
        """

        async def lookup() -> PassdbReply | None:
            key = self.key(username, context)
            entry, expired = self.cache.lookup(key)
            if entry is not None and not expired:
                return entry.reply
            reply, _ = await self._fetch(username, context, key, None)
            return reply

        return Deferred.fromCoroutine(lookup())

    def lookupVerified(
        self, username: str, context: LoginContext, verify: Verify
    ) -> Deferred[tuple[PassdbReply | None, bool]]:
        """
        The reply for C{username} and whether C{verify} (the password check)
        accepts it, from the cache when the rules allow.
        """
        return Deferred.fromCoroutine(self._lookupVerified(username, context, verify))

    async def _lookupVerified(
        self, username: str, context: LoginContext, verify: Verify
    ) -> tuple[PassdbReply | None, bool]:
        key = self.key(username, context)
        entry, expired = self.cache.lookup(key)
        if entry is not None and not expired:
            answer = await self._fromEntry(entry, verify)
            if answer is not None:
                return answer
        return await self._fetch(username, context, key, verify)

    async def _fromEntry(
        self, entry: CacheEntry, verify: Verify
    ) -> tuple[PassdbReply | None, bool] | None:
        """
        Dovecot's C{passdb_cache_verify_plain}: the answer an entry gives,
        or L{None} when the passdb must be asked because a wrong password
        follows a good one, or the entry is past the negative TTL.
        """
        reply = entry.reply
        if reply is None:
            return None, False
        ok = bool(await verify(reply))
        if not ok and not reply.nopassword:
            if entry.lastSuccess or self.cache.pastNegativeTtl(entry):
                entry.lastSuccess = False
                return None
        entry.lastSuccess = ok or reply.nopassword
        return reply, ok

    async def _fetch(
        self, username: str, context: LoginContext, key: Hashable, verify: Verify | None
    ) -> tuple[PassdbReply | None, bool]:
        try:
            reply = await self.passdb.lookup(username, context)
        except CancelledError:
            raise
        except Exception as e:
            entry = self.cache.peek(key)
            if entry is None:
                raise
            answer = await self._fromEntry(entry, verify) if verify else (entry.reply, False)
            if answer is None:
                raise
            self._answeredStale(e)
            return answer
        self._passdbAnswered()
        ok = False
        if verify is not None and reply is not None:
            ok = bool(await verify(reply))
        self.cache.insert(key, reply, lastSuccess=ok or bool(reply and reply.nopassword))
        return reply, ok

    def _answeredStale(self, error: Exception) -> None:
        """An expired entry answered for a failing passdb: log when this starts."""
        self._staleAnswers += 1
        if self._stale is None:
            self._stale = oneLine(str(error)) or type(error).__name__
            self._staleSince = self.cache.now()
            _log.warn(
                "auth cache: passdb {passdb} failing ({problem}); answering from expired "
                "cache entries",
                passdb=repr(self.passdb),
                problem=self._stale,
            )

    def _passdbAnswered(self) -> None:
        if self._stale is None:
            return
        _log.info(
            "auth cache: passdb {passdb} answering again after {seconds:.1f} s; "
            "{count:,} logins answered from expired cache entries meanwhile",
            passdb=repr(self.passdb),
            seconds=self.cache.now() - self._staleSince,
            count=self._staleAnswers,
        )
        self._stale = None
        self._staleAnswers = 0


_SIZE = re.compile(r"(\d+)\s*([kmgt]?)i?b?", re.I)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)", re.I)
_DURATION_UNITS = {
    **dict.fromkeys(("", "s", "sec", "secs", "second", "seconds"), 1),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60),
    **dict.fromkeys(("h", "hour", "hours"), 3600),
    **dict.fromkeys(("d", "day", "days"), 86400),
    **dict.fromkeys(("w", "week", "weeks"), 7 * 86400),
}


def parseSize(text: str) -> int:
    """
    A size as Dovecot writes C{auth_cache_size}: bytes, or with a
    1024-based unit C{k}, C{M}, C{G}, C{T} (C{10M}, C{512 kB}).

    @raise ValueError: saying what is accepted.
    """
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError("not a size (bytes, or a number with k, M or G, e.g. 10M)")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def parseDuration(text: str) -> float:
    """
    A time as Dovecot writes C{auth_cache_ttl}: seconds, or a number with
    a unit (C{30 s}, C{5 mins}, C{1 hour}, C{2d}).

    @raise ValueError: saying what is accepted.
    """
    match = _DURATION.fullmatch(text.strip())
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _DURATION_UNITS:
        raise ValueError("not a time (seconds, or a number with s, min, hour or day)")
    return float(match.group(1)) * _DURATION_UNITS[unit]
