"""
Decoy checks: an unknown user costs the hashing a known one does.

When no passdb knows the user, no password is hashed. With a failure delay
that does not show (failures are answered the delay after their check
began), but without one (C{--auth-failure-delay 0}, a C{nodelay} user) or
when the hashing pool is busy for longer than the delay, a fast answer would
say "no such user". So L{Decoys} counts the schemes of the stored passwords
the passdbs return (each once), has the verifier make, once per scheme, a stored
password of that scheme and cost for a random password (off the reactor
thread, like a check), and checks an unknown user's password against the
decoy of the most common scheme, ignoring the result.

Until the passdbs have returned a stored password (just after start-up)
there is nothing to imitate, and unknown users cost nothing.
"""

from __future__ import annotations

from collections import Counter

from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure

from imapreferral.interfaces import IPasswordVerifier
from imapreferral.passwords import splitScheme

#: Stored passwords whose scheme is counted: enough to know the usual
#: scheme, and a bound on memory however many users a passdb knows.
MAX_COUNTED = 10_000


class Decoys:
    """
    @ivar verifier: Checks passwords; decoys are made by its C{decoyLike}
        (L{imapreferral.passwords.SchemeVerifier} has one). A verifier
        without it gets no decoys.
    """

    def __init__(self, verifier: IPasswordVerifier) -> None:
        self.verifier = verifier
        self._seen: Counter[str] = Counter()
        #: The stored passwords counted (by their hash(), not kept): each
        #: once, so repeating one user's lookups (any client can, under any
        #: spelling of the name) does not choose the decoy's scheme.
        self._counted: set[int] = set()
        #: Per scheme: the decoy, or None while it is made or if it cannot be.
        self._decoys: dict[str, str | None] = {}

    def saw(self, stored: str) -> None:
        """
        A passdb returned C{stored}: count its scheme once per stored password
        (the first L{MAX_COUNTED}), and make its decoy once.
        """
        scheme = splitScheme(stored, "")[0]  # "": the verifier's default scheme
        key = hash(stored)
        if key not in self._counted and len(self._counted) < MAX_COUNTED:
            self._counted.add(key)
            self._seen[scheme] += 1
        if scheme in self._decoys:
            return
        self._decoys[scheme] = None
        make = getattr(self.verifier, "decoyLike", None)
        if make is not None:
            make(stored).addCallbacks(self._made, self._notMade, (scheme,))

    def _made(self, decoy: str, scheme: str) -> None:
        self._decoys[scheme] = decoy

    def _notMade(self, failure: Failure) -> None:
        """A stored value that cannot be imitated can be no one's password either."""

    async def check(self, password: bytes) -> None:
        """Check C{password} against the decoy of the usual scheme, if there is one yet."""
        if not self._seen:
            return
        decoy = self._decoys.get(self._seen.most_common(1)[0][0])
        if decoy is None:
            return
        try:
            await self.verifier.verify(decoy, password)
        except CancelledError:
            raise
        except Exception:
            pass  # the result, whatever it is, is ignored
