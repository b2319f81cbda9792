"""docs/architecture.md's module table names every module there is, and only those.

Each row is a top-level module (``errors.py``) or a package (``serving/``) whose modules are
named in backticks in its description (``_gate.py``, or ``_base`` inside ``_judges/``). A
module file that no row names, or a name no file answers to, fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import policy_canary

PACKAGE = Path(policy_canary.__file__).parent
DOC = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"
ROW = re.compile(r"^\| `([^`]+)` \| (.*) \|$", re.M)
#: A private module named in a row: ``_name.py`` or ``_name``.
NAMED = re.compile(r"`(_[a-z0-9_]+)(?:\.py)?`")


def _rows() -> dict[str, str]:
    rows = dict(ROW.findall(DOC.read_text(encoding="utf-8")))
    assert "serving/" in rows, "the module table was not found"
    return rows


def _modules() -> list[Path]:
    return [
        p.relative_to(PACKAGE)
        for p in sorted(PACKAGE.rglob("*.py"))
        if "migrations" not in p.parts and p.name != "__init__.py"
    ]


def _row_of(module: Path, rows: dict[str, str]) -> str | None:
    """The row of the innermost package holding ``module`` (or the module's own row)."""
    if len(module.parts) == 1:
        return module.name if module.name in rows else None
    for depth in range(len(module.parts) - 1, 0, -1):
        key = "/".join(module.parts[:depth]) + "/"
        if key in rows:
            return key
    return None


def test_every_module_is_named_in_its_packages_row() -> None:
    rows = _rows()
    unnamed = []
    for module in _modules():
        row = _row_of(module, rows)
        if row is None:
            unnamed.append(f"{module}: no row")
        elif len(module.parts) > 1 and not re.search(
            rf"`{re.escape(module.stem)}(\.py)?`", rows[row]
        ):
            unnamed.append(f"{module}: not named in the {row} row")
    assert unnamed == []


def test_every_module_a_row_names_exists() -> None:
    rows = _rows()
    missing = []
    for key, text in rows.items():
        if not key.endswith("/"):
            if not (PACKAGE / key).is_file():
                missing.append(key)
            continue
        folder = PACKAGE / key
        missing += [f"{key}{n}" for n in NAMED.findall(text) if not any(folder.rglob(f"{n}.py"))]
    assert missing == []


def test_every_migration_is_in_the_store_row() -> None:
    versions = sorted(p.stem for p in (PACKAGE / "store/migrations/versions").glob("0*.py"))
    row = _rows()["store/"]
    assert f"`{versions[0]}` … `{versions[-1]}`" in row
