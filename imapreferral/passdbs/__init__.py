"""
Passdbs by name, as C{--passdb type:argument} gives them (the model is
C{twisted.cred.strcred}'s C{--auth file:/path}).
"""

from __future__ import annotations

import shlex

from imapreferral.interfaces import IPassdb
from imapreferral.login.fields import FieldError, redactSecretFields
from imapreferral.passdbs.passwdfile import PasswdFileError, PasswdFilePassdb
from imapreferral.passdbs.sql import DEFAULT_TIMEOUT, SQLPassdb
from imapreferral.passdbs.sqlconf import SQLConfigError
from imapreferral.passdbs.static import StaticPassdb

PASSDB_TYPES = ("passwd-file", "static", "sql")


class PassdbConfigError(ValueError):
    """A passdb description that cannot be used; the message says why."""


def passdbFromString(
    description: str, timeout: float = DEFAULT_TIMEOUT, option: str = "passdb"
) -> IPassdb:
    """
    Make a passdb from C{"passwd-file:/path"}, C{"static:fields"} or
    C{"sql:/path/to/dovecot-sql.conf.ext"}. A SQL passdb's query is run
    once against its database now, so a broken query stops start-up.

    @param timeout: Connect and query timeout for SQL passdbs, in seconds.
    @param option: The option that gave C{description}, for messages
        (C{passdb}, or C{auth} for C{--auth passwd-file:...}).

    @raise PassdbConfigError: naming the description, file and line.
    """
    shown = f"--{option} {shlex.quote(description)}"
    kind, sep, argument = description.partition(":")
    if not sep or kind not in PASSDB_TYPES:
        raise PassdbConfigError(
            f"{shown}: expected TYPE:ARGUMENT with TYPE one of " + ", ".join(PASSDB_TYPES)
        )
    try:
        if kind == "passwd-file":
            if not argument:
                raise PassdbConfigError(f"--{option} passwd-file: needs a file path")
            return PasswdFilePassdb(argument)
        if kind == "sql":
            if not argument:
                raise PassdbConfigError(f"--{option} sql: needs a config file path")
            return SQLPassdb.fromFile(argument, timeout=timeout)
        if not argument.strip():
            raise PassdbConfigError(
                f"--{option} static: needs fields, e.g. 'static:nopassword host=imap2.example.com "
                "nologin'"
            )
        return StaticPassdb.fromString(argument)
    except (PasswdFileError, SQLConfigError) as e:
        raise PassdbConfigError(str(e)) from None
    except FieldError as e:
        # Only a static passdb gets here; its password= and pass= are secrets.
        shown = f"--{option} " + shlex.quote(redactSecretFields(description))
        raise PassdbConfigError(f"{shown}: {e}") from None


__all__ = [
    "PassdbConfigError",
    "PasswdFilePassdb",
    "SQLPassdb",
    "StaticPassdb",
    "passdbFromString",
]
