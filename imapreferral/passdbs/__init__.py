"""
Passdbs by name, as C{--passdb type:argument} gives them (the model is
C{twisted.cred.strcred}'s C{--auth file:/path}).
"""

from __future__ import annotations

from imapreferral.interfaces import IPassdb
from imapreferral.login.fields import FieldError
from imapreferral.passdbs.passwdfile import PasswdFileError, PasswdFilePassdb
from imapreferral.passdbs.static import StaticPassdb

PASSDB_TYPES = ("passwd-file", "static")


class PassdbConfigError(ValueError):
    """A passdb description that cannot be used; the message says why."""


def passdbFromString(description: str) -> IPassdb:
    """
    Make a passdb from C{"passwd-file:/path"} or C{"static:fields"}.

    @raise PassdbConfigError: naming the description, file and line.
    """
    kind, sep, argument = description.partition(":")
    if not sep or kind not in PASSDB_TYPES:
        raise PassdbConfigError(
            f"--passdb {description!r}: expected TYPE:ARGUMENT with TYPE one of "
            + ", ".join(PASSDB_TYPES)
        )
    try:
        if kind == "passwd-file":
            if not argument:
                raise PassdbConfigError("--passdb passwd-file: needs a file path")
            return PasswdFilePassdb(argument)
        return StaticPassdb.fromString(argument)
    except PasswdFileError as e:
        raise PassdbConfigError(str(e)) from None
    except FieldError as e:
        raise PassdbConfigError(f"--passdb {description!r}: {e}") from None


__all__ = ["PassdbConfigError", "PasswdFilePassdb", "StaticPassdb", "passdbFromString"]
