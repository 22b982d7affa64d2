"""
Refer or proxy, per client: which client this is before it logs in, and
what a C{host} + C{nologin} reply comes to for it.

Referrals work only for clients that follow them (of the ten we tried,
only Alpine, a c-client program); every other client stops at "Try this
server instead.". Proxying works for every client but keeps the front door
in the data path. So the front door can refer the clients that follow and
proxy the rest (C{--referral-mode auto}), and the log says which is which.

All three rules here are pure and table-tested: L{recogniseClient} (what
we can tell before login), L{referOrProxy} (the mode, per client) and
L{byeBeforeReferral} (c-client's one-prompt form).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

#: c-client (Alpine, Pine, PHP's imap extension, ...): its tags are eight
#: lower-case hex digits counting up (C{sprintf(tag, "%08lx", gensym++)} in
#: C{imap4r1.c}). The counter is the process's, not the connection's: after
#: following a referral Alpine's first command was C{00000002 AUTHENTICATE}.
#: Not every c-client program follows referrals: c-client does so only for
#: a program that registers a referral callback (Alpine and Pine do; PHP's
#: C{imap_open} does not), and before login they look the same. So this
#: fingerprint is one of the C{--referral-client-names}, on by default, and
#: an admin whose users have PHP webmails takes it out.
C_CLIENT = "c-client"
#: A client we cannot tell apart: it gets what the mode gives everyone.
UNKNOWN = "unknown"

#: Clients that follow referrals: L{C_CLIENT} (the tag fingerprint) and
#: C{ID} names (case-insensitive). Alpine sends no C{ID} before login
#: (measured, 2.26), so today it is recognised by its tags; a name helps a
#: client that does send one.
DEFAULT_REFERRAL_CLIENT_NAMES = (C_CLIENT, "alpine", "pine")

#: C{refer}: everyone gets the referral (Dovecot's behaviour, and ours by
#: default). C{proxy}: nobody does, the session is proxied to the host
#: instead. C{auto}: recognised followers get it, the rest are proxied.
REFER, PROXY, AUTO = "refer", "proxy", "auto"
REFERRAL_MODES = (REFER, PROXY, AUTO)

_isCClientTag = re.compile(rb"[0-9a-f]{8}").fullmatch


def recogniseClient(
    tags: Sequence[bytes], idName: str | None, followerNames: Collection[str]
) -> str:
    """
    Which client this is, from what it sent before logging in. New
    fingerprints are one line here, and one row in the table test.

    @param tags: The tags of the commands the connection sent so far,
        the login's included.
    @param idName: The C{name} the client gave in C{ID} before login, or
        L{None}.
    @param followerNames: Lower-case names of clients known to follow
        referrals (C{--referral-client-names}); L{C_CLIENT} among them turns
        the tag fingerprint on.
    @return: L{C_CLIENT} when that fingerprint is on and every tag is
        c-client's (whatever the first value); else the matching C{ID} name
        from C{followerNames} (never L{C_CLIENT} or L{UNKNOWN}: only tags
        say c-client); else L{UNKNOWN}. The result is one of the admin's
        words or ours, never the client's text.
    """
    if C_CLIENT in followerNames and tags and all(map(_isCClientTag, tags)):
        return C_CLIENT
    if idName is not None:
        name = idName.strip().lower()
        for known in followerNames:
            if name == known and known not in (C_CLIENT, UNKNOWN):
                return known
    return UNKNOWN


def followsReferrals(client: str) -> bool:
    """Whether a recognised client is one that follows login referrals."""
    return client != UNKNOWN


def referOrProxy(mode: str, client: str) -> str:
    """
    What a C{host} + C{nologin} reply comes to for this client: L{REFER}
    (send the referral) or L{PROXY} (proxy the session to that host).

    @param mode: One of L{REFERRAL_MODES}.
    @param client: What L{recogniseClient} said.
    """
    if mode == REFER:
        return REFER
    if mode == PROXY:
        return PROXY
    return REFER if followsReferrals(client) else PROXY


def byeBeforeReferral(client: str, sasl: bool) -> bool:
    """
    Whether a C{NO [REFERRAL]} is sent as c-client's one-prompt form: an
    untagged C{BYE [REFERRAL url] text} first, then the tagged C{NO}, then
    the connection closes.

    On the C{AUTHENTICATE} path c-client retries each advertised mechanism
    three times before it follows a tagged C{NO [REFERRAL]} (with CRAM-MD5
    and PLAIN advertised, Alpine asked for the password six times); after
    the C{BYE} it follows at once. Other clients report the C{BYE} as an
    aborted connection, so only c-client gets it, and only there: on the
    C{LOGIN} path it follows after the first C{NO}.
    """
    return sasl and client == C_CLIENT
