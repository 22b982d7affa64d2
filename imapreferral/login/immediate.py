"""
Answers that are ready at once, without a Deferred.

Most logins need no waiting: a passwd-file or static passdb answers from
memory and a C{{PLAIN}} or salted-SHA password is checked in microseconds.
Yet C{Portal.login}, C{maybeDeferred} and C{Deferred.fromCoroutine} wrap
every step in a Deferred, and each refusal (a referral is one) in a
C{Failure}: for a referral login that bookkeeping cost more than the
passdb lookup, the password check and the decision together.

So the login core returns a plain value (or raises) when it has the answer
at once, and a Deferred only when something must be waited for (a slow
hash on the thread pool, SQL, DNS, the failure delay). Callers handle both
through L{isWaiting}. Any checker or realm keeps working: theirs are
asked the C{twisted.cred} way, only ours (those with
C{requestAvatarIdNow}) skip the wrapping.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

from twisted.cred.error import UnhandledCredentials
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python import reflect
from zope.interface import providedBy

T = TypeVar("T")

#: What may be waited for: the value now, or a Deferred of it.
Soon = Any


def isWaiting(result: object) -> bool:
    """Whether C{result} of a C{...Now} call is a Deferred still to be waited for."""
    return isinstance(result, Deferred)


def runNow(coroutine: Coroutine[Any, Any, T]) -> T | Deferred[T]:
    """
    Run C{coroutine} until it finishes or waits: its value (or its exception,
    raised) if it never waited, else a Deferred of the rest, run by Twisted.

    Awaiting a Deferred that already has its result does not suspend a
    coroutine (C{Deferred.__await__} returns the result at once), so a
    coroutine whose every Deferred has fired finishes inside the first
    C{send}. One that suspended is waiting on an unfired Deferred, and
    C{Deferred.fromCoroutine} takes it over from there: its first C{send}
    only finds that Deferred again.
    """
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    return Deferred.fromCoroutine(coroutine)


def askChecker(checker: object, credentials: object) -> Soon:
    """
    The checker's avatar id for C{credentials}, now if it can say so
    (C{requestAvatarIdNow}, which ours have), else its C{requestAvatarId}
    Deferred. A refusal is raised, or the Deferred fails with it.
    """
    now = getattr(checker, "requestAvatarIdNow", None)
    if now is not None:
        return now(credentials)
    return maybeDeferred(checker.requestAvatarId, credentials)  # type: ignore[attr-defined]


def loginNow(portal: Portal, credentials: object, interface: type) -> Soon:
    """
    C{portal.login(credentials, None, interface)}: the realm's
    C{(interface, avatar, logout)}, now when the checker and the realm answer
    at once. A refusal is raised (or the Deferred fails with it). A portal of
    another class than Twisted's own is asked through its C{login}, which it
    may have changed.
    """
    if type(portal) is not Portal:
        return portal.login(credentials, None, interface)
    for credentialInterface, checker in portal.checkers.items():
        if credentialInterface.providedBy(credentials):
            avatarId = askChecker(checker, credentials)
            if isWaiting(avatarId):
                return avatarId.addCallback(portal.realm.requestAvatar, None, interface)
            return portal.realm.requestAvatar(avatarId, None, interface)
    names = ", ".join(map(reflect.qual, providedBy(credentials)))
    raise UnhandledCredentials(f"No checker for {names}")
