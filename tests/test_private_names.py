"""Helpers a package's modules share have package-internal names, not underscore imports."""

from __future__ import annotations

import ast
from pathlib import Path

import policy_canary

ROOT = Path(policy_canary.__file__).parent


def _is_module(dotted: str) -> bool:
    path = ROOT.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file()


def test_no_module_imports_another_modules_underscore_names() -> None:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or not node.module:
                continue
            if not node.module.startswith("policy_canary") or not _is_module(node.module):
                continue  # importing a private submodule of a package is fine
            found += [
                f"{path.relative_to(ROOT)}:{node.lineno} takes {a.name} from {node.module}"
                for a in node.names
                if a.name.startswith("_") and not a.name.startswith("__")
            ]
    assert found == []
