"""
The C{imapreferral} command, for what an administrator asks before and
while running the server (Dovecot's C{doveadm auth test}, C{doveadm pw}):

    imapreferral auth test [server options] USER [PASSWORD]
    imapreferral auth lookup [server options] USER
    imapreferral pw [-s SCHEME] [-p PASSWORD] [-t HASH] [-l]
    imapreferral config check [server options]

The commands that read the server's configuration take the server's own
options (L{imapreferral.tap.Options}, subclassed here): a command line that
works for C{twistd imapreferral} works here, and a bad one gets the same
one-line error. The Twisted parts run to completion under
L{twisted.internet.task.react}.
"""

from __future__ import annotations

import getpass
import ipaddress
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogBeginner,
)
from twisted.python import usage

from imapreferral import __version__, tap
from imapreferral.authtest import (
    FAILURE,
    SUCCESS,
    TEMPFAIL,
    ServerParts,
    loginContext,
    lookupUser,
    runLogin,
)
from imapreferral.hashing import DEFAULT_SCHEME, SCHEMES, WEAK_SCHEMES, makePassword
from imapreferral.passwords import MalformedPassword, SchemeVerifier, UnknownScheme

#: Exit status for a command line or configuration that cannot be used
#: (sysexits.h EX_USAGE), apart from the answers 0, 1 and 2.
USAGE = 64
#: Exit status after Ctrl-C at a prompt (128 + SIGINT, as a shell reports it).
INTERRUPTED = 130

USAGE_TEXT = f"""\
Usage: imapreferral COMMAND [options] [arguments]

Commands:
  auth test [server options] USER [PASSWORD]
                       Run a LOGIN through the configured passdbs, as the
                       server would; print the fields found, the passdb that
                       answered and the tagged reply (--remote-ip, --tls:
                       where the client is). Exit 0: logged in, referred or
                       proxied; 1: failed; 2: temporary failure.
  auth lookup [server options] USER
                       The passdbs' fields for USER, no password checked.
  pw [-s SCHEME] [-p PASSWORD]
                       Make a stored password Dovecot and imapreferral accept
                       (default scheme {DEFAULT_SCHEME}); -t HASH checks one.
  config check [server options]
                       Read every option and file the server would; print what
                       would be served, or the start-up error (exit 1, also
                       for an expired certificate).

Server options are those of 'twistd imapreferral' (see its --help);
'imapreferral COMMAND --help' lists them. Exit status {USAGE}: unusable options.
"""


class _ServerCommand(tap.Options):
    """The server's options, for a command that runs without listening."""

    def _adoptsListeners(self) -> bool:
        """
        Nothing is bound or adopted here, so a C{systemd:} listener (the
        socket unit's) is taken as given: the unit's options can be checked
        from a shell, where systemd passed no sockets.
        """
        return True

    def parseCommand(self, args: Sequence[str], status: int = USAGE) -> None:
        """
        Parse as the server does; a bad option or file is its one line on
        stderr and exit C{status}.
        """
        try:
            self.parseOptions(list(args))
        except SystemExit as e:
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
                raise SystemExit(status) from None
            raise


class _WhereFrom(_ServerCommand):
    optParameters = [
        ["remote-ip", None, None,
         "The client address the login comes from (SQL %r; --trusted-networks for plaintext)."],
        ["local-ip", None, None, "The address it connected to (SQL %l, proxy_maybe)."],
        ["local-port", None, None, "The port it connected to (proxy_maybe).",
         tap._count("local-port")],
    ]  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self["client-tls"] = False

    def opt_tls(self) -> None:
        """
        The client connected over TLS (--listen-tls, or after STARTTLS):
        plaintext logins are allowed. Without --tls or --remote-ip the
        plaintext rule (--plaintext-auth) is not applied.
        """
        self["client-tls"] = True

    def context(self) -> Any:
        if self["client-tls"] and self["tls"] is None:
            raise usage.UsageError("--tls: the server offers no TLS without --tls-cert")
        for option in ("remote-ip", "local-ip"):
            if self[option] is not None:
                try:
                    ipaddress.ip_address(self[option])
                except ValueError:
                    raise usage.UsageError(
                        f"{tap._shown(option, self[option])}: not an IP address"
                    ) from None
        return loginContext(
            self["remote-ip"], self["local-ip"], self["local-port"], self["client-tls"]
        )


class AuthTestOptions(_WhereFrom):
    synopsis = "imapreferral auth test [server options] USER [PASSWORD]"
    longdesc = (
        "Run LOGIN USER PASSWORD through the server's passdbs, checker and decision, "
        "as a login would (answered at once: no failure delay, no per-address "
        "penalty), and print each passdb's fields (passwords redacted), each --auth "
        "checker's answer, the one that decided and the tagged reply. The plaintext rule "
        "applies to a client described by --remote-ip and --tls. In --referral-mode auto "
        "it also shows what a client following referrals gets. Without PASSWORD it is "
        "asked for (no terminal: a line of stdin)."
    )

    def parseArgs(self, user: str, password: str | None = None) -> None:
        self["user"] = user
        self["password"] = password


class AuthLookupOptions(_WhereFrom):
    synopsis = "imapreferral auth lookup [server options] USER"
    longdesc = (
        "Print every passdb's fields for USER (passwords redacted), checking no password; "
        "--auth checkers, which only check passwords, are listed as not asked."
    )

    def parseArgs(self, user: str) -> None:
        self["user"] = user


class ConfigCheckOptions(_ServerCommand):
    synopsis = "imapreferral config check [server options]"
    longdesc = (
        "Read the options, passdb files, SQL configs (running each query once) and "
        "TLS files as the server does at start-up and print what would be served; "
        "exit 1 with start-up's error, or with an expired certificate. Listening ports "
        "are not bound nor systemd's sockets looked up: the server may be running."
    )


class PwOptions(usage.Options):
    synopsis = "imapreferral pw [-s SCHEME] [-p PASSWORD] [-t HASH] [-l]"
    longdesc = "Make (or with -t check) a stored password, as doveadm pw does."
    optFlags = [["list", "l", "List the schemes we make."]]
    optParameters = [
        ["scheme", "s", DEFAULT_SCHEME, "The scheme to make."],
        ["password", "p", None, "The password (asked for, twice, when not given)."],
        ["test", "t", None, "Check PASSWORD against this stored password instead."],
    ]

    def parseArgs(self) -> None:
        pass

    def postOptions(self) -> None:
        if self["scheme"].upper() not in SCHEMES:
            raise usage.UsageError(
                f"-s {self['scheme']}: unknown scheme (use one of {', '.join(SCHEMES)})"
            )


def _react(main: Callable[..., Any], *args: Any) -> NoReturn:
    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor, *args)))
    raise AssertionError("react returned")  # pragma: no cover


def _print(lines: Sequence[str]) -> None:
    for line in lines:
        print(line)


async def _withServer(reactor: Any, config: Any, run: Callable[..., Any]) -> None:
    parts = ServerParts(config, tap.makeService)
    parts.start()
    try:
        result = await run(parts)
    finally:
        await parts.stop()
    _print(result.lines())
    raise SystemExit(result.status)


def _askPassword(command: str, prompt: str, instead: str) -> str:
    """
    Read a password: at C{prompt} on the terminal, without echo; with no
    terminal (a script, cron), a line of standard input, without getpass's
    "may be echoed" warning (a pipe echoes nothing). Nothing to read (end
    of input) or Ctrl-C is one line on stderr and a non-zero exit, not a
    traceback.
    """
    try:
        if _hasTerminal():
            return getpass.getpass(prompt)
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return line.removesuffix("\n")
    except EOFError:
        print(
            f"{command}: no password to read (end of input); give it {instead}",
            file=sys.stderr,
        )
        raise SystemExit(USAGE) from None
    except KeyboardInterrupt:
        print(f"\n{command}: interrupted", file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None


def _hasTerminal() -> bool:
    """Whether getpass has a terminal to ask on (it tries /dev/tty first, then stdin)."""
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
    except OSError:
        return sys.stdin.isatty()
    return True


def authTest(args: Sequence[str]) -> NoReturn:
    config = AuthTestOptions()
    config.parseCommand(args)
    context = _parsed(config, config.context)
    password = config["password"]
    if password is None:
        password = _askPassword("imapreferral auth test", "Password: ", "after USER")
    user = config["user"].encode("utf-8", "surrogateescape")
    secret = password.encode("utf-8", "surrogateescape")

    async def main(reactor: Any) -> None:
        await _withServer(
            reactor, config, lambda parts: runLogin(parts, reactor, user, secret, context)
        )

    _react(main)


def authLookup(args: Sequence[str]) -> NoReturn:
    config = AuthLookupOptions()
    config.parseCommand(args)
    context = _parsed(config, config.context)
    user = config["user"].encode("utf-8", "surrogateescape")

    async def main(reactor: Any) -> None:
        await _withServer(reactor, config, lambda parts: lookupUser(parts, user, context))

    _react(main)


def _parsed(config: Any, parse: Callable[[], Any]) -> Any:
    try:
        return parse()
    except usage.UsageError as e:
        print(f"imapreferral: {e}", file=sys.stderr)
        raise SystemExit(USAGE) from None


def configCheck(args: Sequence[str]) -> NoReturn:
    from imapreferral.configreport import describe

    config = ConfigCheckOptions()
    config.parseCommand(args, status=1)
    report = describe(config)
    _print(report.lines)
    for problem in report.problems:
        print(f"imapreferral: {problem}", file=sys.stderr)
    raise SystemExit(1 if report.problems else 0)


def pw(args: Sequence[str]) -> NoReturn:
    config = PwOptions()
    try:
        config.parseOptions(list(args))
    except usage.UsageError as e:
        print(f"imapreferral pw: {e}", file=sys.stderr)
        raise SystemExit(USAGE) from None
    if config["list"]:
        print(" ".join(SCHEMES))
        raise SystemExit(0)
    password = config["password"]
    if password is None:
        password = _askPassword("imapreferral pw", "Enter new password: ", "with -p")
        # Typed blind, so asked twice; a script's line on stdin, once.
        retype = config["test"] is None and _hasTerminal()
        if (
            retype
            and _askPassword("imapreferral pw", "Retype new password: ", "with -p") != password
        ):
            print("imapreferral pw: the passwords do not match", file=sys.stderr)
            raise SystemExit(FAILURE)
    secret = password.encode("utf-8", "surrogateescape")
    if config["test"] is not None:
        _react(_testHash, config["test"], secret)
    scheme = config["scheme"].upper()
    try:
        print(makePassword(secret, scheme))
    except ValueError as e:
        print(f"imapreferral pw: {e}", file=sys.stderr)
        raise SystemExit(FAILURE) from None
    if scheme in WEAK_SCHEMES:
        print(
            f"imapreferral pw: {{{scheme}}} is quick to guess from; prefer {DEFAULT_SCHEME} "
            "or ARGON2ID unless CRAM-MD5 needs it",
            file=sys.stderr,
        )
    raise SystemExit(SUCCESS)


async def _testHash(reactor: Any, stored: str, password: bytes) -> None:
    verifier = SchemeVerifier(reactor=reactor)
    try:
        matches = await verifier.verify(stored, password)
    except (UnknownScheme, MalformedPassword) as e:
        print(f"imapreferral pw: {e}", file=sys.stderr)
        raise SystemExit(TEMPFAIL) from None
    finally:
        await verifier.stopService()
    print(f"{stored} ({'verified' if matches else 'does not match'})")
    raise SystemExit(SUCCESS if matches else FAILURE)


COMMANDS: dict[tuple[str, ...], Callable[[Sequence[str]], NoReturn]] = {
    ("auth", "test"): authTest,
    ("auth", "lookup"): authLookup,
    ("pw",): pw,
    ("config", "check"): configCheck,
}


def _warningsToStderr() -> None:
    """
    What the server would log as a warning or error (a SQL database it
    cannot reach yet, a passdb outage) goes to stderr, one line each;
    the rest of its log (the login line) is not shown.
    """

    def show(event: dict[str, Any]) -> None:
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text += f": {failure.getErrorMessage()}"
        print(f"imapreferral: {text}", file=sys.stderr)

    only = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(show, [only])], redirectStandardIO=False
    )


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The console script C{imapreferral}."""
    args = list(sys.argv[1:] if argv is None else argv)
    _warningsToStderr()
    for words, command in COMMANDS.items():
        if tuple(args[: len(words)]) == words:
            command(args[len(words) :])
    if args in (["--version"], ["version"]):
        print(f"imapreferral {__version__}")
        raise SystemExit(0)
    if args in (["--help"], ["-h"], ["help"]):
        print(USAGE_TEXT, end="")
        raise SystemExit(0)
    shown = " ".join(args) or "(none)"
    print(f"imapreferral: unknown command {shown}\n\n{USAGE_TEXT}", end="", file=sys.stderr)
    raise SystemExit(USAGE)
