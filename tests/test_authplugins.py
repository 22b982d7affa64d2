"""
C{--auth TYPE:ARGS}: twisted.cred checker plugins on the command line, ours
and Twisted's, consulted in order with C{--passdb}, and the example plugin
(examples/twisted/plugins/auth_http.py) found in a plugin directory of its
own and serving a referral through a real twistd.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_twisted
from test_tap import _refusal, _twistd, _twistdRefusal
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import deferLater
from twisted.web.resource import Resource
from twisted.web.server import Site

from imapreferral import tap
from imapreferral.listeners import ListenerService
from imapreferral.testing import TranscriptClient

EXAMPLE_PLUGIN = Path(__file__).parent.parent / "examples" / "twisted" / "plugins" / "auth_http.py"


@contextlib.asynccontextmanager
async def _serving(*args: str) -> AsyncIterator[TranscriptClient]:
    """C{twistd imapreferral ARGS} in this process on a free port, and a client of it."""
    from twisted.internet import reactor

    options = tap.Options()
    options.parseOptions(["--listen", "tcp:0:interface=127.0.0.1", *args])
    service = tap.makeService(options)
    service.privilegedStartService()
    service.startService()
    try:
        (listener,) = [s for s in service if isinstance(s, ListenerService)]
        port = (await listener._waitingForPort).getHost().port
        client = await TranscriptClient.connect(reactor, "127.0.0.1", port)
        try:
            yield client
        finally:
            await client.close()
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_twistedMemoryCheckerLogsAUserIn():
    """
    Twisted's own plugin keys its users by str, which no bytes credentials
    match: we store them as bytes, so it works.
    """
    async with _serving("--auth", "memory:alice:secret") as client:
        assert (await client.command(b"a LOGIN alice wrong"))[-1].startswith(b"a NO ")
        reply = await client.command(b"b LOGIN alice secret")
        assert reply[-1].startswith(b"b OK [CAPABILITY ")


@pytest_twisted.ensureDeferred
async def test_twistedFileCheckerLogsAUserIn(tmp_path):
    users = tmp_path / "users"
    users.write_text("alice:secret\n")
    async with _serving("--auth", f"file:{users}", "--auth-failure-delay", "0") as client:
        assert (await client.command(b"a LOGIN alice secret"))[-1].startswith(b"a OK ")


@pytest_twisted.ensureDeferred
async def test_checkerOfHashedCredentialsServesCramMD5():
    """memory: takes IUsernameHashedPassword: CRAM-MD5 is offered and works."""
    import base64
    import hmac

    async with _serving("--auth", "memory:alice:secret") as client:
        assert b"AUTH=CRAM-MD5" in client.greeting
        (challenge,) = await client.command(b"a AUTHENTICATE CRAM-MD5")
        nonce = base64.b64decode(challenge[2:])
        digest = hmac.new(b"secret", nonce, "md5").hexdigest().encode()
        client.send(base64.b64encode(b"alice " + digest) + b"\r\n")
        assert (await client.until(b"a"))[-1].startswith(b"a OK ")


@pytest_twisted.ensureDeferred
async def test_checkerOfCleartextOnlyOffersNoCramMD5():
    """Twisted's unix: takes IUsernamePassword only: CRAM-MD5 is neither offered nor accepted."""
    async with _serving("--auth", "unix") as client:
        assert b"AUTH=PLAIN AUTH=LOGIN]" in client.greeting
        reply = await client.command(b"a AUTHENTICATE CRAM-MD5")
        assert reply[-1].startswith(b"a NO ")


@pytest.mark.parametrize(
    ("order", "alice", "bob"),
    [
        (
            ["--auth", "memory:alice:secret:bob:secret", "--passdb", "static:nopassword "
             "host=imap2.example.com nologin"],
            b"a OK [CAPABILITY ",
            b"b NO [REFERRAL imap://bob;AUTH=PLAIN@imap2.example.com/]",
        ),
        (
            ["--passdb", "static:nopassword host=imap2.example.com nologin", "--auth",
             "memory:alice:secret:bob:secret"],
            b"a NO [REFERRAL imap://alice;AUTH=PLAIN@imap2.example.com/]",
            b"b NO [REFERRAL imap://bob;AUTH=PLAIN@imap2.example.com/]",
        ),
    ],
    ids=["checker first", "passdb first"],
)  # fmt: skip
@pytest_twisted.ensureDeferred
async def test_authAndPassdbAreConsultedInCommandLineOrder(order, alice, bob):
    async with _serving(*order) as client:
        assert (await client.command(b"b LOGIN BOB wrong"))[-1].startswith(bob)
        assert (await client.command(b"a LOGIN alice secret"))[-1].startswith(alice)


@pytest_twisted.ensureDeferred
async def test_authPasswdFileIsOurPassdb(tmp_path):
    """--auth passwd-file:PATH refers as --passdb passwd-file:PATH does."""
    passwd = tmp_path / "u.passwd"
    passwd.write_text("u:{PLAIN}pass::::::host=imap2.example.com nologin\n")
    async with _serving("--auth", f"passwd-file:{passwd}") as client:
        reply = await client.command(b"a LOGIN u pass")
        assert reply == [
            b"a NO [REFERRAL imap://u;AUTH=PLAIN@imap2.example.com/] Try this server instead."
        ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            "--auth nosuch:x",
            "--auth nosuch: no checker plugin 'nosuch' (installed: file, memory, passwd-file, "
            "sql, static, unix; see --help-auth)",
        ),
        ("--auth memory:alice:secret:bob", "--auth memory: argstring must be in format U:P:..."),
        (
            "--auth anonymous",
            "--auth anonymous: checks IAnonymous credentials; IMAP logins need "
            "IUsernamePassword, IUsernameHashedPassword",
        ),
        (
            "--auth file:/nonexistent/users",
            "--auth file:/nonexistent/users: cannot read (No such file or directory)",
        ),
        ("--auth passwd-file:", "--auth passwd-file: needs a file path"),
        ("--auth static:host=imap2", "--auth static:host=imap2: needs password= or nopassword"),
        ("--help-auth-type nosuch", "Invalid auth type: nosuch"),
        (
            "--auth unix --auth-mechanisms CRAM-MD5",
            "--auth-mechanisms CRAM-MD5: CRAM-MD5 needs plaintext or {CRAM-MD5} passwords, "
            "and no passdb or checker may hold them",
        ),
    ],
    ids=lambda v: v if v.startswith("--") else None,
)
def test_badAuthIsRefusedWithOneLine(args, message):
    assert _refusal(args.split()).startswith(f"imapreferral: {message}")


def test_authArgumentsNeverShownInARefusal():
    """memory:NAME:PASSWORD holds a password; the message names the type only."""
    assert "hunter2" not in _refusal(["--auth", "memory:alice:hunter2:bob"])


def test_twistdRefusesABadAuthWithOneLine(tmp_path):
    status, out, err = _twistdRefusal("--auth", "nosuch:x", cwd=str(tmp_path))
    assert (status, out) == (1, "")
    assert err.startswith("imapreferral: --auth nosuch: no checker plugin 'nosuch' (installed: ")
    assert err.count("\n") == 1


def test_twistdHelpAuthListsOursAndTwisteds(tmp_path):
    status, out, err = _twistdRefusal("--help-auth", cwd=str(tmp_path))
    assert (status, err) == (0, "")
    listed = {line.split()[0] for line in out.splitlines()[5:] if line.strip()}
    assert {"passwd-file", "sql", "static", "memory", "file", "unix"} <= listed
    # Checkers of credentials IMAP cannot give are left out.
    assert not {"anonymous", "sshkey"} & listed


def test_twistdHelpAuthTypeExplainsOne(tmp_path):
    status, out, err = _twistdRefusal("--help-auth-type", "static", cwd=str(tmp_path))
    assert (status, err) == (0, "")
    assert out.startswith("Usage: --auth static[:ArgString]\nArgString format: Dovecot passdb")
    assert "  static:nopassword host=imap2.example.com nologin." in out


# The example plugin, end to end.


class _AuthHTTP(Resource):
    """An nginx-style auth_http service: bob lives on imap2, alice here."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[dict[str, str]] = []

    def render_GET(self, request):  # type: ignore[no-untyped-def]
        asked = {
            name: (request.getHeader(name) or "")
            for name in ("Auth-User", "Auth-Pass", "Auth-Protocol", "Client-IP")
        }
        self.requests.append(asked)
        if (asked["Auth-User"], asked["Auth-Pass"]) not in {("alice", "s%20cret"), ("bob", "pw")}:
            request.setHeader("Auth-Status", "Invalid login or password")
        else:
            request.setHeader("Auth-Status", "OK")
        if asked["Auth-User"] == "bob":
            request.setHeader("Auth-Server", "imap2.example.com")
            request.setHeader("Auth-Port", "1143")
        return b""


@contextlib.asynccontextmanager
async def _authHTTP() -> AsyncIterator[tuple[_AuthHTTP, int]]:
    from twisted.internet import reactor

    service = _AuthHTTP()
    port = reactor.listenTCP(0, Site(service), interface="127.0.0.1")
    try:
        yield service, port.getHost().port
    finally:
        await port.stopListening()


async def _connectWhenListening(proc, port: int) -> TranscriptClient:
    """A client of the twistd in C{proc}, once it listens (the reactor serves HTTP meanwhile)."""
    from twisted.internet import reactor

    for _ in range(200):
        assert proc.poll() is None, proc.stdout.read().decode()
        try:
            return await TranscriptClient.connect(reactor, "127.0.0.1", port)
        except ConnectionRefusedError:
            await deferLater(reactor, 0.1, lambda: None)
    raise AssertionError("twistd did not start listening")


@pytest_twisted.ensureDeferred
async def test_examplePluginFromItsOwnDirectoryRefersThroughTwistd(tmp_path):
    from test_tap import _freePort

    plugins = tmp_path / "site" / "twisted" / "plugins"  # no __init__.py: a plugin directory
    plugins.mkdir(parents=True)
    shutil.copy(EXAMPLE_PLUGIN, plugins)
    imapPort = _freePort()
    async with _authHTTP() as (service, httpPort):
        proc = _twistd(
            "--listen", f"tcp:{imapPort}:interface=127.0.0.1", "--auth-failure-delay", "0",
            "--auth", f"auth-http:http://127.0.0.1:{httpPort}/auth",
            cwd=str(tmp_path), pythonpath=[tmp_path / "site"],
        )  # fmt: skip
        try:
            client = await _connectWhenListening(proc, imapPort)
            try:
                assert b"AUTH=CRAM-MD5" not in client.greeting  # the checker takes cleartext only
                assert await client.command(b"a LOGIN bob pw") == [
                    b"a NO [REFERRAL imap://bob;AUTH=PLAIN@imap2.example.com:1143/] "
                    b"Try this server instead."
                ]
                reply = await client.command(b'b LOGIN alice "s cret"')
                assert reply[-1].startswith(b"b OK [CAPABILITY ")
            finally:
                await client.close()
        finally:
            proc.terminate()
            out = await _exited(proc)
    assert service.requests[0] == {
        "Auth-User": "bob",
        "Auth-Pass": "pw",
        "Auth-Protocol": "imap",
        "Client-IP": "127.0.0.1",
    }
    assert service.requests[1]["Auth-Pass"] == "s%20cret"  # percent-encoded, as nginx
    assert "<--auth auth-http: HTTPAuthChecker>" in out
    assert "Traceback" not in out


async def _exited(proc) -> str:
    """Wait (bounded, without blocking the reactor) for C{proc} to end; its output."""
    from twisted.internet import reactor

    for _ in range(200):
        if proc.poll() is not None:
            return proc.stdout.read().decode()
        await deferLater(reactor, 0.1, lambda: None)
    proc.kill()
    raise AssertionError("twistd did not stop")


@pytest_twisted.ensureDeferred
async def test_exampleCheckerRefersThroughTheTestingHarness():
    """The README's "How to test it": the example checker served by imapreferral.testing."""
    from twisted.internet import reactor

    from imapreferral.testing import ServerHarness

    async with _authHTTP() as (_, httpPort):
        checker = _loadExample().HTTPAuthChecker(f"http://127.0.0.1:{httpPort}/auth", reactor)
        async with ServerHarness.forChecker(checker, failureDelay=0).serving() as client:
            assert await client.command(b"a LOGIN bob pw") == [
                b"a NO [REFERRAL imap://bob;AUTH=PLAIN@imap2.example.com:1143/] Try this server instead."
            ]


def test_readmeQuotesTheExampleAsItIs():
    """Every code block of "Write your own checker" is in the example plugin or its test."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Write your own checker", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    sources = _unindented(EXAMPLE_PLUGIN.read_text() + Path(__file__).read_text())
    assert len(blocks) >= 4
    for block in blocks:
        assert _unindented(block) in sources


def _unindented(text: str) -> str:
    return "\n".join(line.strip() for line in text.splitlines())


def test_twistdNamesAPluginThatFailsToImport(tmp_path):
    plugins = tmp_path / "site" / "twisted" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "mine.py").write_text("import no_such_module_here\n")
    status, out, err = _twistdRefusal(
        "--auth", "mine:x", cwd=str(tmp_path), pythonpath=[tmp_path / "site"]
    )
    assert (status, out) == (1, "")
    assert err.splitlines()[-1].endswith(
        f"; a plugin failed to load: {plugins / 'mine.py'}:1: ModuleNotFoundError: "
        "No module named 'no_such_module_here'"
    )


@pytest_twisted.ensureDeferred
async def test_exampleCheckerUnavailableServiceIsATemporaryFailure():
    """A service that is down is NO [UNAVAILABLE], not a wrong password."""
    from test_tap import _freePort
    from twisted.internet import reactor

    from imapreferral.testing import ServerHarness

    checker = _loadExample().HTTPAuthChecker(f"http://127.0.0.1:{_freePort()}/auth", reactor)
    async with ServerHarness.forChecker(checker, failureDelay=0).serving() as client:
        assert await client.command(b"a LOGIN bob pw") == [
            b"a NO [UNAVAILABLE] Temporary authentication failure."
        ]


def _loadExample():  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location("auth_http_example", EXAMPLE_PLUGIN)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_exampleRefusesAnArgumentThatIsNotAURL():
    with pytest.raises(Exception, match="give an http:// or https:// URL"):
        _loadExample().authHTTP.generateChecker("127.0.0.1:9000")


_SERVICE_PLUGIN = """
from twisted.application.service import Service
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.strcred import ICheckerFactory
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(ICredentialsChecker)
class PooledChecker(Service):
    credentialInterfaces = (IUsernamePassword,)

    def requestAvatarId(self, credentials):
        raise NotImplementedError


@implementer(ICheckerFactory, IPlugin)
class PooledCheckerFactory:
    authType = "pooled"
    authHelp = argStringFormat = "A checker with a connection pool to start and stop."
    credentialInterfaces = PooledChecker.credentialInterfaces

    def generateChecker(self, argstring):
        return PooledChecker()


pooled = PooledCheckerFactory()
"""


@pytest_twisted.ensureDeferred
async def test_anAuthCheckerThatIsAServiceStartsAndStopsWithTheServer(tmp_path, monkeypatch):
    import sys

    import twisted.plugins

    plugins = tmp_path / "twisted" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "pooled_checker.py").write_text(_SERVICE_PLUGIN)
    monkeypatch.setattr(twisted.plugins, "__path__", [*twisted.plugins.__path__, str(plugins)])
    monkeypatch.delitem(sys.modules, "twisted.plugins.pooled_checker", raising=False)
    options = tap.Options()
    options.parseOptions(["--listen", "tcp:0:interface=127.0.0.1", "--auth", "pooled"])
    service = tap.makeService(options)
    (source,) = options["sources"]
    service.privilegedStartService()
    service.startService()
    try:
        assert source.checker.running
    finally:
        await service.stopService()
    assert not source.checker.running
    sys.modules.pop("twisted.plugins.pooled_checker", None)


# Review of issue 10: defects found by trying, each a failing test.


def _addPlugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str) -> None:
    """A plugin module C{name} in a temporary plugin directory that getPlugins searches."""
    import sys

    import twisted.plugins

    plugins = tmp_path / "plugins-of-review" / "twisted" / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    (plugins / f"{name}.py").write_text(source)
    monkeypatch.setattr(twisted.plugins, "__path__", [*twisted.plugins.__path__, str(plugins)])
    monkeypatch.delitem(sys.modules, f"twisted.plugins.{name}", raising=False)


def _fakeUnixUser(monkeypatch: pytest.MonkeyPatch, name: str, crypted: str) -> None:
    """
    The system password database, as Twisted's unix: checker reads it
    (C{import pwd} at each login), holding one more user: no user is added
    to the machine.
    """
    import pwd
    import sys
    import types

    def getpwnam(user: str) -> object:
        if user == name:
            return types.SimpleNamespace(pw_passwd=crypted)
        return pwd.getpwnam(user)

    monkeypatch.setitem(sys.modules, "pwd", types.SimpleNamespace(getpwnam=getpwnam))


def _loggedText(events: list[dict]) -> str:
    """Every event as it would be written to the log, tracebacks included."""
    from twisted.logger import formatEventAsClassicLogText

    return "".join(formatEventAsClassicLogText(e) or "" for e in events)


@pytest_twisted.ensureDeferred
async def test_aPasswordTheUnixCheckerCannotDecodeNeverReachesTheLog(monkeypatch, logged):
    """
    Twisted's unix: decodes the password as UTF-8; a Latin-1 one raises
    UnicodeDecodeError, whose repr holds the password bytes, and the chain
    logs that repr (why=...) with every such login.
    """
    import base64

    _fakeUnixUser(monkeypatch, "carol", "$6$saltsalt$" + "x" * 86)
    async with _serving("--auth", "unix", "--auth-failure-delay", "0") as client:
        response = base64.b64encode(b"\0carol\0hunter\xe42")
        reply = await client.command(b"a AUTHENTICATE PLAIN " + response)
        assert reply[-1].startswith(b"a NO ")
    assert "hunter" not in _loggedText(logged)


_LEAKY_PLUGIN = """
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.strcred import ICheckerFactory
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(ICredentialsChecker)
class DirectoryChecker:
    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, bindPassword):
        self.bindPassword = bindPassword

    def __repr__(self):  # as attrs or a dataclass would write it
        return f"DirectoryChecker(bindPassword={self.bindPassword!r})"

    def requestAvatarId(self, credentials):
        raise ConnectionError("directory down")


@implementer(ICheckerFactory, IPlugin)
class DirectoryCheckerFactory:
    authType = "directory"
    authHelp = argStringFormat = "The directory's bind password."
    credentialInterfaces = DirectoryChecker.credentialInterfaces

    def generateChecker(self, argstring):
        return DirectoryChecker(argstring)


directory = DirectoryCheckerFactory()
"""


@pytest_twisted.ensureDeferred
async def test_aFailingCheckerIsLoggedWithoutItsArguments(tmp_path, monkeypatch, logged):
    """
    --auth TYPE:ARGS may hold a password (AuthChecker's repr leaves ARGS out
    for that reason), but a checker that fails is logged by its own repr,
    which a checker written with attrs or dataclasses fills with ARGS.
    """
    _addPlugin(tmp_path, monkeypatch, "review_directory", _LEAKY_PLUGIN)
    async with _serving("--auth", "directory:bindsecret", "--auth-failure-delay", "0") as client:
        reply = await client.command(b"a LOGIN alice pw")
        assert reply == [b"a NO [UNAVAILABLE] Temporary authentication failure."]
    assert "bindsecret" not in _loggedText(logged)


@pytest_twisted.ensureDeferred
async def test_theUnixCheckerDoesNotBlockTheReactor(monkeypatch):
    """
    Twisted's unix: runs crypt() in the calling thread: a SHA-512 hash with
    many rounds (login.defs SHA_CRYPT_MIN_ROUNDS) stops every other session
    for as long as each login is checked. (Python's crypt holds the GIL: a
    thread alone does not help; libpass's builtin sha512_crypt in the
    verifier's pool does. The user is faked at C{sys.modules["pwd"]}, which
    Twisted's checker imports at each login.)
    """
    import itertools
    import time

    from twisted.internet.task import LoopingCall

    _fakeUnixUser(monkeypatch, "carol", "$6$rounds=400000$saltsalt$" + "x" * 86)
    ticks: list[float] = []
    ticking = LoopingCall(lambda: ticks.append(time.monotonic()))
    async with _serving("--auth", "unix", "--auth-failure-delay", "0") as client:
        ticking.start(0.01)
        try:
            reply = await client.command(b"a LOGIN carol wrong")
        finally:
            ticking.stop()
        assert reply[-1].startswith(b"a NO ")
    longest = max(b - a for a, b in itertools.pairwise(ticks))
    assert longest < 0.25, f"the reactor stood still for {longest:.2f} s"


_FORGETFUL_PLUGIN = """
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.strcred import ICheckerFactory
from twisted.internet.defer import Deferred
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(ICredentialsChecker)
class ForgetfulChecker:
    credentialInterfaces = (IUsernamePassword,)

    def requestAvatarId(self, credentials):
        return Deferred.fromCoroutine(self._check(credentials))

    async def _check(self, credentials):
        if credentials.password == b"right":
            return credentials.username
        # A bug: the author forgot "raise UnauthorizedLogin()" here.


@implementer(ICheckerFactory, IPlugin)
class ForgetfulCheckerFactory:
    authType = "forgetful"
    authHelp = argStringFormat = "No arguments."
    credentialInterfaces = ForgetfulChecker.credentialInterfaces

    def generateChecker(self, argstring):
        return ForgetfulChecker()


forgetful = ForgetfulCheckerFactory()
"""


@pytest_twisted.ensureDeferred
async def test_aCheckerAnsweringNoneDoesNotLogTheUserIn(tmp_path, monkeypatch):
    """
    An avatar id of None (a coroutine that falls off its end) is a checker's
    bug, not a successful login: today anyone logs in with any password (as
    account "None" of the realm).
    """
    _addPlugin(tmp_path, monkeypatch, "review_forgetful", _FORGETFUL_PLUGIN)
    async with _serving("--auth", "forgetful", "--auth-failure-delay", "0") as client:
        reply = await client.command(b"a LOGIN alice wrong")
        assert reply[-1].startswith(b"a NO ")


_CHALLENGES_PLUGIN = """
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernameHashedPassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.strcred import ICheckerFactory
from twisted.internet.defer import fail, succeed
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(ICredentialsChecker)
class ChallengeChecker:
    credentialInterfaces = (IUsernameHashedPassword,)

    def requestAvatarId(self, credentials):
        if credentials.checkPassword(b"secret"):
            return succeed(credentials.username)
        return fail(UnauthorizedLogin())


@implementer(ICheckerFactory, IPlugin)
class ChallengeCheckerFactory:
    authType = "challenges"
    authHelp = argStringFormat = "No arguments."
    credentialInterfaces = ChallengeChecker.credentialInterfaces

    def generateChecker(self, argstring):
        return ChallengeChecker()


challenges = ChallengeCheckerFactory()
"""


@pytest_twisted.ensureDeferred
async def test_aCheckerOfChallengesOnlyDisablesTheLoginCommand(tmp_path, monkeypatch):
    """
    No checker can check a cleartext password, so LOGIN cannot work: RFC
    3501 says LOGINDISABLED. Today LOGIN is offered and every attempt is
    NO [UNAVAILABLE], a temporary failure that lasts for ever.
    """
    _addPlugin(tmp_path, monkeypatch, "review_challenges", _CHALLENGES_PLUGIN)
    async with _serving("--auth", "challenges", "--auth-failure-delay", "0") as client:
        assert b"AUTH=CRAM-MD5" in client.greeting
        assert b" LOGINDISABLED" in client.greeting


class _StallingBody(Resource):
    """An auth_http service that answers its headers, then never finishes the body."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list = []

    def render_GET(self, request):  # type: ignore[no-untyped-def]
        from twisted.web.server import NOT_DONE_YET

        self.requests.append(request)
        request.setHeader("Auth-Status", "OK")
        request.setHeader("Content-Length", "100")
        request.write(b"x")
        return NOT_DONE_YET

    def abortAll(self) -> None:
        """End the service's side of every request (the example leaves them open)."""
        for request in self.requests:
            if request.channel is not None:
                request.channel.transport.abortConnection()


@pytest_twisted.ensureDeferred
async def test_exampleCheckerAServiceThatStallsItsBodyIsATemporaryFailure():
    """
    The example promises NO [UNAVAILABLE] for a service that is "down, slow
    or answers other than HTTP 200", but its timeout ends at the response
    headers: readBody waits for ever (here: until the pre-login timeout
    closes the connection, with no answer to the LOGIN). Nor does the client
    hanging up end the HTTP request: cancelling readBody on an Agent's
    response aborts nothing (its transport has no abortConnection).
    """
    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred

    from imapreferral.testing import ServerHarness

    service = _StallingBody()
    port = reactor.listenTCP(0, Site(service), interface="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{port.getHost().port}/auth"
        checker = _loadExample().HTTPAuthChecker(url, reactor, timeout=0.2)
        async with ServerHarness.forChecker(checker, failureDelay=0).serving() as client:
            answer = ensureDeferred(client.command(b"a LOGIN bob pw"))
            answer.addTimeout(3, reactor)
            assert await answer == [b"a NO [UNAVAILABLE] Temporary authentication failure."]
    finally:
        service.abortAll()
        await port.stopListening()
        await deferLater(reactor, 0.05, lambda: None)


@pytest_twisted.ensureDeferred
async def test_aFailingCheckersLogLineCarriesTheSessionId(tmp_path, monkeypatch, logged):
    """
    README, Logs: every line of a connection carries its session id, so that
    grep finds a whole session. The chain's "checker ... failed" line (with
    the traceback an admin needs) carries none: it cannot be tied to the
    login that got NO [UNAVAILABLE].
    """
    _addPlugin(tmp_path, monkeypatch, "review_directory", _LEAKY_PLUGIN)
    async with _serving("--auth", "directory:x", "--auth-failure-delay", "0") as client:
        await client.command(b"a LOGIN alice pw")
    (login,) = [e for e in logged if e.get("log_format", "").startswith("login ")]
    (failed,) = [e for e in logged if e.get("event") == "checker failed"]
    assert login["session"] is not None
    assert failed.get("session") == login["session"]


def test_twistdNamesThePathAndLineOfAPluginWithASyntaxError(tmp_path):
    """
    The one-line refusal names where a plugin failed from the traceback's
    last frame, which for a SyntaxError is Twisted's reflect.py, not the
    plugin: the file and line are in the exception itself.
    """
    plugins = tmp_path / "site" / "twisted" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "mine.py").write_text("def broken(:\n")
    status, out, err = _twistdRefusal(
        "--auth", "mine:x", cwd=str(tmp_path), pythonpath=[tmp_path / "site"]
    )
    assert (status, out) == (1, "")
    refusal = err.splitlines()[-1]
    assert "reflect.py" not in refusal
    assert f"{plugins / 'mine.py'}" in refusal


@pytest_twisted.ensureDeferred
async def test_anEmptyStoredPasswordNeverLogsIn():
    """
    --auth memory:alice: (a trailing colon, or memory:alice::bob:pw) gives
    alice the empty password, and LOGIN alice "" logs her in. Our own
    passwd-file refuses an empty password, as Dovecot does (only nopassword
    lets a user in without one). (Refusing memory:NAME: at start-up would do
    too; this test would then check the refusal instead.)
    """
    async with _serving("--auth", "memory:alice:", "--auth-failure-delay", "0") as client:
        reply = await client.command(b'a LOGIN alice ""')
        assert reply[-1].startswith(b"a NO ")


@pytest_twisted.ensureDeferred
async def test_theTestingHarnessServesACheckerAsAuthDoes():
    """
    README, "How to test it": ServerHarness.forChecker serves your checker.
    But twistd consults an --auth checker through CheckerChain (the name
    lower-cased, a failure logged and made temporary), the harness asks it
    bare: a plugin's tests see "BOB" where twistd would give it "bob".
    """
    from twisted.cred.checkers import ICredentialsChecker
    from twisted.cred.credentials import IUsernamePassword
    from twisted.cred.error import UnauthorizedLogin
    from twisted.internet.defer import fail
    from zope.interface import implementer

    from imapreferral.testing import ServerHarness

    asked: list[bytes] = []

    @implementer(ICredentialsChecker)
    class Recording:
        credentialInterfaces = (IUsernamePassword,)

        def requestAvatarId(self, credentials):  # type: ignore[no-untyped-def]
            asked.append(credentials.username)
            return fail(UnauthorizedLogin())

    async with ServerHarness.forChecker(Recording(), failureDelay=0).serving() as client:
        await client.command(b"a LOGIN BOB pw")
    assert asked == [b"bob"]


@pytest_twisted.ensureDeferred
async def test_theLoginCommandWithoutAPasswordCheckerIsCannot(tmp_path, monkeypatch, logged):
    _addPlugin(tmp_path, monkeypatch, "review_challenges", _CHALLENGES_PLUGIN)
    async with _serving("--auth", "challenges", "--auth-failure-delay", "0") as client:
        reply = await client.command(b"a LOGIN alice secret")
    assert reply == [b"a NO [CANNOT] Plaintext authentication is not available here."]
    assert [e["result"] for e in logged if e.get("event") == "login"] == [
        "plaintext authentication not available (no checker takes passwords)"
    ]


@pytest.mark.parametrize(
    ("password", "answer"), [(b"secret", b"a OK "), (b"wrong", b"a NO ")], ids=["right", "wrong"]
)
@pytest_twisted.ensureDeferred
async def test_theUnixCheckerChecksThePasswordDatabase(monkeypatch, password, answer):
    from passlib.hash import sha512_crypt

    _fakeUnixUser(monkeypatch, "carol", sha512_crypt.hash("secret", rounds=5000))
    async with _serving("--auth", "unix", "--auth-failure-delay", "0") as client:
        reply = await client.command(b"a LOGIN carol " + password)
    assert reply[-1].startswith(answer)


@pytest_twisted.ensureDeferred
async def test_exampleCheckerClosesTheHTTPConnectionWhenTheClientHangsUp():
    from twisted.internet import reactor

    from imapreferral.testing import ServerHarness

    service = _StallingBody()
    port = reactor.listenTCP(0, Site(service), interface="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{port.getHost().port}/auth"
        checker = _loadExample().HTTPAuthChecker(url, reactor, timeout=30)
        async with ServerHarness.forChecker(checker, failureDelay=0).serving() as client:
            client.send(b"a LOGIN bob pw\r\n")
            for _ in range(500):
                if service.requests:
                    break
                await deferLater(reactor, 0.01, lambda: None)
            finished = service.requests[0].notifyFinish()
        lost = []
        finished.addErrback(lost.append)
        for _ in range(500):
            if lost:
                break
            await deferLater(reactor, 0.01, lambda: None)
        assert lost, "the HTTP connection stayed open after the client left"
    finally:
        service.abortAll()
        await port.stopListening()
