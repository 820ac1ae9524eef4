"""The structure DESIGN §11 asks for, checked from the source so that it cannot rot."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("imports", ROOT / "scripts" / "imports.py")
imports = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(imports)


def test_no_import_cycles():
    assert imports.cycles(imports.graph()) == []


def test_no_part_imports_the_loop():
    users = {m for m, deps in imports.graph().items() if "supervisord.loop" in deps}
    assert users <= {"supervisord.cli"}


def test_only_the_redis_package_calls_the_redis_client():
    """Outside ``supervisord/redis`` the code may catch redis-py's errors, but every
    command goes through the store."""
    offenders = []
    for path in (ROOT / "supervisord").rglob("*.py"):
        if "redis" in path.relative_to(ROOT / "supervisord").parts[:1]:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr == "r"
                    and isinstance(node.value, ast.Attribute | ast.Name)):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
