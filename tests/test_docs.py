"""The user docs render as written: every table row of every page is a row of a rendered table."""

from pathlib import Path

import markdown  # Python-Markdown, a dependency of tensorboard
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])


def table_lines(text: str) -> list[str]:
    """Source lines that are meant as table rows (outside fenced code), without the |---| separators."""
    rows, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("|") and not set(line) <= set("|-: "):
            rows.append(line)
    return rows


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_table_row_renders(page):
    text = page.read_text()
    html = markdown.markdown(text, extensions=["tables", "fenced_code"])
    assert html.count("<tr>") == len(table_lines(text)), "a table is broken (a blank line or a row outside it?)"


def test_a_blank_line_inside_a_table_is_caught():
    broken = "| a | b |\n|---|---|\n| 1 | 2 |\n\n| 3 | 4 |\n"
    assert markdown.markdown(broken, extensions=["tables"]).count("<tr>") != len(table_lines(broken))
