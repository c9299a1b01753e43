"""Documentation and docstrings point only at files that exist in the repository: every
relative Markdown link, and every ``docs/<name>.md`` named in the code (issue 11: a module
pointed at a PHYSICS.md that the repository does not hold)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKDOWN = sorted([ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("plugins/*/README.md")])
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
DOC_NAME = re.compile(r"\bdocs/[\w.-]+\.md\b")


def relative_links(path: Path) -> list[str]:
    return [target for target in LINK.findall(path.read_text()) if not re.match(r"[a-z]+:", target)]


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_links_exist(path: Path) -> None:
    missing = [target for target in relative_links(path) if not (path.parent / target).exists()]
    assert not missing, f"{path.relative_to(ROOT)} links to missing files: {missing}"


def test_docs_named_in_code_exist() -> None:
    sources = [*ROOT.glob("tensorframe/**/*.py"), *ROOT.glob("plugins/*/*/**/*.py"), *ROOT.glob("benchmarks/**/*.py")]
    missing = sorted({(str(p.relative_to(ROOT)), name) for p in sources for name in DOC_NAME.findall(p.read_text())
                      if not (ROOT / name).exists()})
    assert not missing, f"code names docs that do not exist: {missing}"


def test_no_reference_to_the_design_guides_outside_the_repository() -> None:
    """PHYSICS.md, DESIGN.md and STYLE.md live outside the repository: never cite them."""
    sources = [*MARKDOWN, *ROOT.glob("tensorframe/**/*.py"), *ROOT.glob("plugins/*/*/**/*.py"), *ROOT.glob("tests/*.py")]
    pattern = re.compile(r"\b(PHYSICS|DESIGN|STYLE)\.md\b")
    cited = sorted(str(p.relative_to(ROOT)) for p in sources if p != Path(__file__).resolve() and pattern.search(p.read_text()))
    assert not cited, f"files citing guides that are not in the repository: {cited}"
