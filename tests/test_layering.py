"""The login core stays protocol-agnostic: it never imports the IMAP layer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LOGIN = Path(__file__).parent.parent / "imapreferral" / "login"
FORBIDDEN = ("imapreferral.imap", "twisted.mail")


@pytest.mark.parametrize("module", sorted(LOGIN.glob("*.py")), ids=lambda p: p.name)
def test_loginCoreImportsNoIMAP(module):
    for node in ast.walk(ast.parse(module.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            assert not name.startswith(FORBIDDEN), f"{module.name} imports {name}"
