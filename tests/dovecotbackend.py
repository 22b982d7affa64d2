"""
A real Dovecot IMAP backend for proxy tests: a private instance per test
module (own base_dir, config, passwd-file, master-user passdb, a maildir
with a marker message per user, loopback ports from the OS, optional TLS
with the test certificate), started once and stopped afterwards.

Dovecot is Debian's C{dovecot-imapd} package (CI installs it). Without it
the tests that need it are skipped, unless C{IMAPREFERRAL_REQUIRE_DOVECOT}
is set (CI sets it, so a missing install step fails instead of hiding).

As root, Dovecot's own unprivileged users run it (C{dovecot}, C{dovenull})
and the mail processes run as C{dovecot}; as anyone else, everything runs
as that user with no chroot (Dovecot's non-root mode).
"""

from __future__ import annotations

import getpass
import grp
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from haproxyserver import _listening, freePort, requireExecutable, stopProcess

#: Users, passwords and master users of every instance.
USERS = {"alice": "secret", "bob": "secret2", "carol": 'pä ss"wörd', "moved": "secret"}
MASTERS = {"admin": "masterpw"}
#: Extra passdb fields: C{moved} is referred to the same Dovecot on its
#: second address, as alice (C{{port}} is the plain IMAP port).
EXTRA = {"moved": "nologin host=127.0.0.2 port={port} destuser=alice"}


def dovecotExecutable() -> str:
    """The C{dovecot} program; skip (or fail, if required) without one."""
    return requireExecutable("dovecot", "dovecot-imapd", path="/usr/sbin:/sbin")


def marker(user: str) -> bytes:
    """The one message in C{user}'s INBOX."""
    return f"Subject: marker-{user}\r\n\r\nhello {user}\r\n".encode()


_CONFIG = """\
base_dir = {dir}/run
state_dir = {dir}/state
instance_name = imapreferral-test-{port}
protocols = imap
listen = 127.0.0.1
log_path = {dir}/dovecot.log
auth_verbose = yes
auth_failure_delay = 0
login_trusted_networks = 127.0.0.0/8
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = {internal}
default_internal_group = {internalGroup}
default_login_user = {login}
mail_location = maildir:~/Maildir
mail_uid = {mailUser}
mail_gid = {mailGroup}
first_valid_uid = 0
{tls}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1, 127.0.0.2
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tlsPort}
  }}
  service_count = 0
  process_min_avail = 1
{chroot}}}
service anvil {{
{anvilChroot}  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {dir}/masters
  master = yes
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {dir}/users
}}
userdb {{
  driver = static
  args = home={dir}/home/%u
}}
"""


class DovecotBackend:
    """
    One private Dovecot. C{port} is plain IMAP (STARTTLS offered when
    C{certificate} is given), C{tlsPort} implicit TLS (only then).
    """

    def __init__(self, executable: str, certificate: tuple[Path, Path] | None = None) -> None:
        self.executable = executable
        # Not under pytest's 0700 tmp dirs: the mail user must reach homes.
        self.directory = Path(tempfile.mkdtemp(prefix="imapreferral-dovecot-"))
        self.directory.chmod(0o755)
        self.port, self.tlsPort = freePort("127.0.0.1"), freePort("127.0.0.1")
        self.logPath = self.directory / "dovecot.log"
        self.configPath = self.directory / "dovecot.conf"
        self.tls = certificate is not None
        self._process: subprocess.Popen[bytes] | None = None
        self._write(certificate)

    def _write(self, certificate: tuple[Path, Path] | None) -> None:
        root = os.geteuid() == 0
        me = getpass.getuser()
        tls = "ssl = no"
        if certificate is not None:
            tls = f"ssl = yes\nssl_cert = <{certificate[0]}\nssl_key = <{certificate[1]}"
        self.configPath.write_text(
            _CONFIG.format(
                dir=self.directory, port=self.port, tlsPort=self.tlsPort if self.tls else 0,
                internal="dovecot" if root else me, login="dovenull" if root else me,
                internalGroup="dovecot" if root else grp.getgrgid(os.getgid()).gr_name,
                mailUser="dovecot" if root else me, mailGroup="dovecot" if root else os.getgid(),
                tls=tls, chroot="" if root else "  chroot =\n",
                anvilChroot="" if root else "  chroot =\n",
            )
        )  # fmt: skip
        self._passwd("users", USERS)
        self._passwd("masters", MASTERS)
        for user in USERS:
            maildir = self.directory / "home" / user / "Maildir"
            for sub in ("cur", "new", "tmp"):
                (maildir / sub).mkdir(parents=True)
            (maildir / "new" / "1000000000.M1P1.marker").write_bytes(marker(user))
        if root:
            for path in [self.directory / "home", *(self.directory / "home").rglob("*")]:
                shutil.chown(path, "dovecot", "dovecot")

    def _passwd(self, name: str, users: Mapping[str, str]) -> None:
        lines = "".join(
            f"{user}:{{PLAIN}}{password}::::::{EXTRA.get(user, '').format(port=self.port)}\n"
            for user, password in users.items()
        )
        (self.directory / name).write_text(lines, encoding="utf-8")

    @property
    def pid(self) -> int | None:
        """The master process's id while it runs (its tree is the whole Dovecot)."""
        return None if self._process is None else self._process.pid

    def log(self) -> str:
        return self.logPath.read_text(errors="replace") if self.logPath.exists() else ""

    def start(self, attempts: int = 400) -> DovecotBackend:
        """
        Start in the foreground (C{-F}) and wait, bounded, until the port
        listens and a greeting shows authentication is ready.
        """
        with open(self.directory / "stdout.log", "wb") as out:
            self._process = subprocess.Popen(
                [self.executable, "-F", "-c", str(self.configPath)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        for _ in range(attempts):
            if self._process.poll() is not None:
                break
            if _listening("127.0.0.1", self.port) and self._greets():
                return self
            time.sleep(0.025)
        output = (self.directory / "stdout.log").read_text(errors="replace")
        self.stop()
        raise AssertionError(f"dovecot did not start:\n{output}\n{self.log()}")

    def _greets(self) -> bool:
        """Whether a connection gets Dovecot's real greeting right away."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as probe:
                return b"[CAPABILITY" in probe.recv(4096)
        except OSError:
            return False

    def stop(self) -> None:
        """Terminate (Dovecot stops its children), wait bounded, clean up."""
        process, self._process = self._process, None
        stopProcess(process, seconds=10)
        shutil.rmtree(self.directory, ignore_errors=True)


def startDovecot(certificate: tuple[Path, Path] | None = None):
    """For a module-scoped fixture: a started backend (skips without Dovecot)."""
    return DovecotBackend(dovecotExecutable(), certificate).start()
