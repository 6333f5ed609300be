"""Shipped code, messages and docs cite only this repository (docs/...): never the design notes, issue numbers or
folders that live outside it. Scans every text file a user receives (the library, nodes, web UI, docs, README,
example workflows, packaging)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("lumina2_train", "nodes", "web", "docs", "example_workflows", "README.md", "__init__.py", "pyproject.toml",
           "requirements.txt")
TEXT = {".py", ".md", ".js", ".json", ".toml", ".txt", ".css", ".html", ".yaml", ".yml"}
OUTSIDE = [
    (re.compile(r"\b(RECIPE|DESIGN|COMFYUI|STYLE|BENCHMARKS)\.md\b"), "a design note outside the repository"),
    (re.compile(r"\bsteering\b", re.I), "the steering notes"),
    (re.compile(r"\bissues? #?\d+", re.I), "an issue number of the project tracker"),
    (re.compile(r"/work/shared|\.\./shared\b|\bshared/tools\b"), "a folder outside the repository"),
]


def _shipped_files():
    for name in SHIPPED:
        path = ROOT / name
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        yield from (p for p in files if p.suffix in TEXT and "__pycache__" not in p.parts)


def references_outside(text: str) -> list[str]:
    return [f"{why}: {m.group(0)!r}" for pattern, why in OUTSIDE for m in pattern.finditer(text)]


def test_shipped_text_cites_only_this_repository():
    found = []
    for path in _shipped_files():
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            found += [f"{path.relative_to(ROOT)}:{n}: {hit}" for hit in references_outside(line)]
    assert not found, "cite docs/ instead:\n" + "\n".join(found)


@pytest.mark.parametrize("text", ["see RECIPE.md §3", "(DESIGN.md decision 9)", "as in issue 5", "Issue #12",
                                  "the steering notes", "/work/shared/tools/x.sh", "../shared/comfyui"])
def test_the_scan_catches_each_kind_of_reference(text):
    assert references_outside(text)


def test_the_scan_allows_our_own_docs():
    assert not references_outside("docs/recipe.md, docs/benchmarks.md, docs/comfyui.md; bench --suite issue5")
