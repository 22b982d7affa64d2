"""
Alpine (Debian's C{alpine}, c-client inside) driven in a C{tmux} pane: it
opens an INBOX on our server, and we answer its screens as a user would
(the password, "no" to saving it on disk), noting each password prompt's
host. Its IMAP debug log is the transcript. Blocking: run it in a thread
while the reactor serves.

Without C{alpine} or C{tmux} the tests that need it are skipped, unless
C{IMAPREFERRAL_REQUIRE_ALPINE} is set.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import attrs
from haproxyserver import requireExecutable

_PROMPT = re.compile(r"HOST: (\S+) .*USER: (\S+) +ENTER PASSWORD:")


def alpineExecutables() -> tuple[str, str]:
    """C{alpine} and C{tmux}; skip (or fail, if required) without them."""
    return requireExecutable("alpine", "alpine"), requireExecutable("tmux", "tmux")


@attrs.frozen
class AlpineRun:
    """
    @ivar prompts: C{host:port} of each password prompt, in order.
    @ivar screen: The last screen.
    @ivar transcript: Alpine's IMAP debug lines, both directions.
    """

    prompts: list[str]
    screen: str
    transcript: list[str]


def runAlpine(
    home: Path,
    folder: str,
    password: str,
    opened: str,
    seconds: float = 40,
) -> AlpineRun:
    """
    Open C{folder} (c-client syntax, C{{127.0.0.1:port/user=u/notls}}INBOX)
    with a fresh configuration in C{home}; answer every password prompt
    with C{password}; stop once the screen shows C{opened} or after
    C{seconds}, then quit Alpine and close the pane. The pane lives on a
    tmux server of its own (C{-S} in C{home}), so no other tmux user is
    touched.
    """
    alpine, tmuxProgram = alpineExecutables()
    tmux = [tmuxProgram, "-S", str(home / "tmux.socket")]
    session = "alpine"
    (home / "mail").mkdir(parents=True, exist_ok=True)  # else a screen says it was made
    (home / "pinerc").write_text(
        "user-domain=example.org\n"
        # No rsh/ssh "rimap" attempts before IMAP (c-client's default).
        "rsh-open-timeout=0\nssh-open-timeout=0\n"
        # No greeting screen; status messages (the warnings about AUTH=PLAIN
        # in the clear) not held on screen for seconds.
        "last-version-used=2.26\nstatus-message-delay=-1\n"
        f"inbox-path={folder}\n"
    )
    command = (
        f"cd {home} && HOME={home} {alpine} -d imap=4 -p {home}/pinerc -nowrite_password_cache -i"
    )
    subprocess.run(
        [*tmux, "new-session", "-d", "-s", session, "-x", "200", "-y", "50", command], check=True
    )

    def screen() -> str:
        return subprocess.run(
            [*tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True
        ).stdout

    def keys(*typed: str) -> None:
        subprocess.run([*tmux, "send-keys", "-t", session, *typed], check=False)

    prompts: list[str] = []
    shown = ""
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.2)
            shown = screen()
            prompt = _PROMPT.search(shown)
            if "Exit this greeting" in shown:
                keys("E")
            elif "Preserve password on DISK" in shown:
                keys("n")
            elif prompt is not None:
                prompts.append(prompt.group(1))
                keys(password, "Enter")
                for _ in range(50):  # until this prompt has gone, bounded
                    time.sleep(0.1)
                    if _PROMPT.search(screen()) is None:
                        break
            elif opened in shown:
                break
        keys("q")
        time.sleep(0.3)
        keys("y")
        time.sleep(0.3)
    finally:
        subprocess.run([*tmux, "kill-server"], stderr=subprocess.DEVNULL, check=False)
    debug = home / ".pine-debug1"
    lines = debug.read_text(errors="replace").splitlines() if debug.exists() else []
    transcript = [line.split(": ", 1)[1] for line in lines if line.startswith("IMAP DEBUG")]
    return AlpineRun(prompts=prompts, screen=shown, transcript=transcript)
