"""The repository's layout contract: the runtime half of ``tumor`` never imports the offline half."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_MODULES = sorted(p for p in (ROOT / "tumor").glob("*.py"))
APP_FILES = [ROOT / "app.py", *sorted((ROOT / "pages").glob("*.py")), *sorted((ROOT / "ui").glob("*.py"))]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", RUNTIME_MODULES + APP_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_runtime_and_app_never_import_the_lab(path):
    lab = sorted(m for m in imported_modules(path) if m == "tumor.lab" or m.startswith("tumor.lab."))
    assert not lab, f"{path.relative_to(ROOT)} imports the offline half: {lab}"


def test_top_level_is_the_design_cards_layout():
    allowed = {
        "README.md", "LICENSE", "requirements.txt", "requirements-dev.txt", "app.py", "pages", "tumor", "weights",
        "tests", "docs", "gallery", "ui", "pytest.ini", "ruff.toml", "pyproject.toml",
    }  # fmt: skip
    tracked = {p.name for p in ROOT.iterdir() if not p.name.startswith(".")}
    ignored = {"runs", "__pycache__"}
    assert tracked - ignored <= allowed, sorted(tracked - ignored - allowed)
    assert not (ROOT / "views").exists()


@pytest.mark.parametrize(("name", "limit"), [("README.md", 10_000), ("weights/MODEL_CARD.md", 15_000)])
def test_readme_and_model_card_stay_short(name, limit):
    size = len((ROOT / name).read_bytes())
    assert size <= limit, f"{name} is {size:,} bytes; issue 26 caps it at {limit:,}"
