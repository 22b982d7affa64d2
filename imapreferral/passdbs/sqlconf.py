"""
Dovecot's SQL passdb configuration (C{dovecot-sql.conf.ext}) and its
C{password_query}, compiled into SQL with bound parameters.

Dovecot pastes escaped values into the query text. We never do: every
C{%u}-style variable becomes a driver parameter. A variable standing alone
in a string literal (C{'%u'}) becomes the parameter itself; a literal mixing
text and variables (C{'%n@%d'}) becomes a concatenation of parameters and
text, so the SQL means the same and a user name such as C{x' OR '1'='1}
is only ever a value.
"""

from __future__ import annotations

import re

import attrs

from imapreferral.login.context import LoginContext

#: Keys we use; Dovecot's others (user_query, iterate_query, ...) are ignored.
KNOWN_KEYS = ("driver", "connect", "password_query", "default_pass_scheme")
DRIVERS = ("sqlite", "pgsql")

#: Dovecot's short variables and their long names (Dovecot 2.3 "Variables").
_SHORT = {
    "u": "user", "n": "username", "d": "domain", "r": "rip", "l": "lip", "s": "service",
    "a": "lport", "b": "rport", "m": "mech", "c": "secured",
}  # fmt: skip
#: Long names; real_* and orig_user have no proxy or rewrite to differ from here.
_ALIASES = {"real_rip": "rip", "real_lip": "lip", "real_rport": "rport", "real_lport": "lport",
            "orig_user": "user", "original_user": "user"}  # fmt: skip
_LONG = frozenset(_SHORT.values()) | frozenset(_ALIASES)
_MODIFIERS = {"L": str.lower, "U": str.upper}

#: %%, %[LU]x, %[LU]{name} or %{L:name}-less Dovecot forms we accept.
_VARIABLE = re.compile(r"%(?:(%)|([LU]?)(?:([a-zA-Z])|\{([A-Za-z_:]+)\}))")


class SQLConfigError(ValueError):
    """A SQL config that cannot be used; the message names file and line."""


#: One libpq conninfo item, C{key = value} (a value may be C{'quoted'} with
#: C{\\} escapes), or a stray word (libpq: 'missing "=" after "word"').
_CONNINFO_ITEM = re.compile(r"([A-Za-z_]+)\s*=\s*('(?:[^'\\]|\\.)*'?|[^\s']*)|(\S+)")
#: A libpq URI's password: C{postgresql://user:PASSWORD@host}, C{?password=PASSWORD}
#: (and C{?sslpassword=}).
_URI_PASSWORDS = re.compile(
    r"^postgres(?:ql)?://[^:@/?#]*:([^@/?#]*)@|[?&](?:ssl)?password=([^&#]*)", re.IGNORECASE
)

REDACTED = "***"

#: libpq keywords whose value is a secret (sslpassword: the client key's).
_SECRET_KEYS = frozenset({"password", "sslpassword"})


def _conninfoPasswords(connect: str) -> list[tuple[int, int]]:
    """
    Where the passwords are in a conninfo or URI, as C{(start, end)}
    spans: the value of C{password=} (and C{sslpassword=}), and any stray
    words after it up to the next C{key=} (C{password=two words}: libpq echoes the second word in its
    error).
    """
    if re.match(r"postgres(?:ql)?://", connect, re.IGNORECASE):
        return [
            match.span(group)
            for match in _URI_PASSWORDS.finditer(connect)
            for group in (1, 2)
            if match.group(group)
        ]
    spans: list[tuple[int, int]] = []
    afterPassword = False
    for match in _CONNINFO_ITEM.finditer(connect):
        key, value, stray = match.groups()
        if stray is not None:
            if afterPassword:
                spans.append(match.span(3))
            continue
        # Any case: libpq refuses PASSWORD=, and its value is still shown.
        afterPassword = key.lower() in _SECRET_KEYS
        if afterPassword and value:
            spans.append(match.span(2))
    return spans


def redactConninfo(connect: str) -> str:
    """
    A conninfo (or URI) fit for a message: passwords become C{***}, the
    rest stays for diagnosis (C{host=db password=*** dbname=mail}).
    """
    for start, end in reversed(_conninfoPasswords(connect)):
        connect = connect[:start] + REDACTED + connect[end:]
    return connect


def redactSecrets(text: str, connect: str) -> str:
    """
    C{text} (say, libpq's error about C{connect}) with every password of
    C{connect} replaced by C{***}, quoted or not, wherever it appears.
    """
    secrets: set[str] = set()
    for start, end in _conninfoPasswords(connect):
        raw = connect[start:end]
        secrets.add(raw)
        if raw.startswith("'"):
            secrets.add(re.sub(r"\\(.)", r"\1", raw.strip("'")))
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


@attrs.frozen
class Variable:
    """One use of a variable: its long name and an optional case modifier."""

    name: str
    modifier: str = ""

    def value(self, username: str, context: LoginContext) -> str:
        local, _, domain = username.partition("@")
        values = {
            "user": username,
            "username": local,
            "domain": domain,
            "rip": context.remoteIP or "",
            "lip": context.localIP or "",
            "service": context.service,
            "rport": "" if context.remotePort is None else str(context.remotePort),
            "lport": "" if context.localPort is None else str(context.localPort),
        }
        values["mech"] = context.mechanism
        values["secured"] = "secured" if context.secured else ""
        text = values[_ALIASES.get(self.name, self.name)]
        return _MODIFIERS[self.modifier](text) if self.modifier else text


def _parseVariables(text: str) -> list[str | Variable]:
    """
    Split text into literal pieces and L{Variable}s.

    @raise ValueError: for an unknown variable.
    """
    pieces: list[str | Variable] = []
    position = 0
    for match in _VARIABLE.finditer(text):
        pieces.append(text[position : match.start()])
        position = match.end()
        percent, modifier, short, long = match.groups()
        if percent:
            pieces.append("%")
            continue
        if short is not None:
            if short not in _SHORT:
                raise ValueError(f"unknown variable %{short}")
            name = _SHORT[short]
        else:
            name = long
            if ":" in name:  # %{L:user} is not Dovecot 2.3 syntax, but be clear
                raise ValueError(f"unsupported variable %{{{name}}}")
            if name not in _LONG:
                raise ValueError(f"unknown variable %{{{name}}}")
        pieces.append(Variable(name, modifier))
    if "%" in text[position:]:
        raise ValueError(f"stray % in {text[position:]!r}")
    pieces.append(text[position:])
    return [p for p in pieces if p != ""]


@attrs.frozen
class CompiledQuery:
    """
    A password_query as SQL text with placeholders and the variables to bind.

    @ivar sql: The query; placeholders in the driver's paramstyle.
    @ivar variables: One per placeholder, in order.
    """

    sql: str
    variables: tuple[Variable, ...]

    def parameters(self, username: str, context: LoginContext) -> tuple[str, ...]:
        return tuple(v.value(username, context) for v in self.variables)


#: SQL tokens that matter for finding string literals: '...' with '' escapes,
#: "..." identifiers, -- and /* */ comments, and everything else.
_SQL_TOKEN = re.compile(
    r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/|[^'\"\-/]+|[-/]|['\"]", re.S
)


def compileQuery(query: str, placeholder: str, castText: str = "{}") -> CompiledQuery:
    """
    Turn a Dovecot query into parameterised SQL.

    @param placeholder: The driver's placeholder (C{?} or C{%s}).
    @param castText: How to make a parameter a text value inside a
        concatenation (PostgreSQL needs C{CAST(%s AS text)}).
    @raise ValueError: for an unknown variable or an unterminated literal.
    """
    escapePercent = placeholder == "%s"
    out: list[str] = []
    variables: list[Variable] = []

    def literal(text: str) -> str:
        quoted = "'" + text.replace("'", "''") + "'"
        return quoted.replace("%", "%%") if escapePercent else quoted

    for token in _SQL_TOKEN.findall(query):
        if token in ("'", '"'):
            raise ValueError("unterminated quoted string in password_query")
        if token.startswith(("--", "/*")):
            out.append(" ")  # a comment: no variables, no quotes, nothing to send
            continue
        if token.startswith("'"):
            pieces = _parseVariables(token[1:-1].replace("''", "'"))
            if not any(isinstance(p, Variable) for p in pieces):
                out.append(literal("".join(p for p in pieces if isinstance(p, str))))
            elif len(pieces) == 1:
                variables.append(pieces[0])  # type: ignore[arg-type]
                out.append(placeholder)
            else:
                parts = []
                for piece in pieces:
                    if isinstance(piece, Variable):
                        variables.append(piece)
                        parts.append(castText.format(placeholder))
                    else:
                        parts.append(literal(piece))
                out.append("(" + " || ".join(parts) + ")")
        elif token.startswith('"'):
            out.append(token.replace("%", "%%") if escapePercent else token)
        else:
            for piece in _parseVariables(token):
                if isinstance(piece, Variable):
                    variables.append(piece)
                    out.append(placeholder)
                else:
                    out.append(piece.replace("%", "%%") if escapePercent else piece)
    return CompiledQuery("".join(out), tuple(variables))


@attrs.frozen
class SQLConfig:
    """
    The settings of one Dovecot SQL config file.

    @ivar path: The file, for messages.
    @ivar queryLine: The line where password_query starts, for messages.
    @ivar ignored: Keys present but not used by us.
    """

    path: str
    driver: str
    connect: str = attrs.field(repr=redactConninfo)
    passwordQuery: str
    defaultPassScheme: str = "MD5"
    queryLine: int = 0
    ignored: tuple[str, ...] = ()


def _stripComment(line: str) -> str:
    """Drop a C{#} comment outside double quotes, as Dovecot's parser does."""
    quoted = False
    for index, char in enumerate(line):
        if char == '"' and (index == 0 or line[index - 1] != "\\"):
            quoted = not quoted
        elif char == "#" and not quoted and (index == 0 or line[index - 1].isspace()):
            return line[:index].rstrip()
    return line


def _logicalLines(text: str) -> list[tuple[int, str]]:
    """
    Join C{\\} continuations; drop comments and blank lines (also inside a
    continuation, as Dovecot does); keep the first line's number.
    """
    lines: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = _stripComment(raw.strip())
        if not line:
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        lines.append((start, " ".join(p for p in pending if p)))
        pending = []
    if pending:
        lines.append((start, " ".join(p for p in pending if p)))
    return lines


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        quote = value[0]
        return value[1:-1].replace("\\" + quote, quote).replace("\\\\", "\\")
    return value


def parseSQLConfig(path: str, text: str) -> SQLConfig:
    """
    Parse a C{dovecot-sql.conf.ext}.

    @raise SQLConfigError: C{"path:line: what is wrong"}.
    """
    settings: dict[str, tuple[int, str]] = {}
    ignored: list[str] = []
    for number, line in _logicalLines(text):
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key or not re.fullmatch(r"[a-z_]+", key):
            shown = redactConninfo(line)[:60]
            raise SQLConfigError(f"{path}:{number}: expected 'key = value', got {shown!r}")
        if key in KNOWN_KEYS:
            settings[key] = (number, _unquote(value.strip()))
        else:
            ignored.append(key)
    for required in ("driver", "connect", "password_query"):
        if required not in settings:
            raise SQLConfigError(f"{path}: missing '{required} = ...'")
    driverLine, driver = settings["driver"]
    if driver not in DRIVERS:
        raise SQLConfigError(
            f"{path}:{driverLine}: driver {driver!r} is not supported (use {', '.join(DRIVERS)})"
        )
    queryLine, query = settings["password_query"]
    try:
        compileQuery(query, "?")
    except ValueError as e:
        raise SQLConfigError(f"{path}:{queryLine}: password_query: {e}") from None
    return SQLConfig(
        path=path,
        driver=driver,
        connect=settings["connect"][1],
        passwordQuery=query,
        defaultPassScheme=settings.get("default_pass_scheme", (0, "MD5"))[1].upper(),
        queryLine=queryLine,
        ignored=tuple(ignored),
    )
