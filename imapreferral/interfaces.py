"""
The seams users plug into: passdbs, password verification, and the way a
checker of their own carries a referral through C{twisted.cred}.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IPassdb(Interface):
    """
    A source of users and their Dovecot-style fields (the "referral portal").
    """

    def lookup(username, context):  # type: ignore[no-untyped-def]
        """
        Look a user up.

        @param username: The login name after normalisation.
        @type username: L{str}
        @param context: Where the login comes from.
        @type context: L{imapreferral.login.context.LoginContext}
        @return: A Deferred firing with a
            L{imapreferral.login.fields.PassdbReply}, or L{None} when the
            passdb does not know the user. A failed Deferred means the passdb
            is unavailable (the client gets a temporary failure).
        """

    def canProvidePlaintext():  # type: ignore[no-untyped-def]
        """
        @return: Whether this passdb may hold plaintext or C{{CRAM-MD5}}
            passwords, so that the CRAM-MD5 mechanism can work.
        """


class IPassdbCacheKey(Interface):
    """
    A passdb whose answer depends on more than the user name, for the auth
    cache (L{imapreferral.passdbs.cache}): Dovecot keys a SQL passdb's
    entries by the values of its query's C{%variables}.
    """

    def cacheKey(username, context):  # type: ignore[no-untyped-def]
        """
        @return: A L{tuple} of L{str}: the values the answer for this
            login depends on; two logins with the same values get the same
            answer.
        """


class IVerifyingPassdb(IPassdb):
    """
    A passdb that wants the password check with the lookup: the auth cache
    asks its passdb again when a wrong password follows a good one.
    """

    def lookupVerified(username, context, verify):  # type: ignore[no-untyped-def]
        """
        @param verify: Checks the login's password against a reply:
            C{verify(reply)} returns an awaitable L{bool}.
        @return: A Deferred firing with C{(reply, passwordOk)}, the reply
            L{None} for an unknown user; failing as L{IPassdb.lookup} does.
        """


class IPasswordVerifier(Interface):
    """
    Checks a password against a stored, possibly C{{SCHEME}}-prefixed value.
    Implementations may hash in a thread pool, hence the Deferred.
    """

    def verify(stored, password):  # type: ignore[no-untyped-def]
        """
        @param stored: The passdb's password field, e.g. C{{PLAIN}secret}.
        @type stored: L{str}
        @param password: What the client sent.
        @type password: L{bytes}
        @return: A Deferred firing with a L{bool}; failing with
            L{imapreferral.passwords.UnknownScheme} for a scheme it lacks.
        """

    def verifyCramMD5(stored, challenge, response):  # type: ignore[no-untyped-def]
        """
        Check a CRAM-MD5 answer (RFC 2195) against a stored password:
        plaintext, or Dovecot's C{{CRAM-MD5}} HMAC context.

        @param response: The client's hex digest, without the user name.
        @return: A L{bool}; L{False} for schemes that cannot do CRAM-MD5.
        @raise imapreferral.passwords.UnknownScheme: for a scheme it lacks.
        """

    def plaintext(stored):  # type: ignore[no-untyped-def]
        """
        @return: The plaintext password as L{bytes} if C{stored} holds it in
            a recoverable form, else L{None} (challenge-response then fails).
        @raise imapreferral.passwords.UnknownScheme: for a scheme it lacks.
        """


class IReferralCarrier(Interface):
    """
    An avatar id, avatar or C{UnauthorizedLogin} that carries a referral.

    A checker of your own refers a user by raising an C{UnauthorizedLogin}
    that provides this (e.g. L{imapreferral.LoginReferral}), and suggests a
    referral after a good login by returning an avatar id that provides it
    (e.g. L{imapreferral.AvatarId}).
    """

    referral = Attribute("An imapreferral.Referral, or None when there is nothing to suggest.")
