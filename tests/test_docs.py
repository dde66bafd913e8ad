"""The README and docs/ hold everything they link to: a clone of the repository is enough."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!\!)\[[^\]]*\]\(([^)\s]+)\)|<(https?://[^>]+)>")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE = re.compile(r"`[^`\n]*`")


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code (links there are not links)."""
    return CODE.sub("", FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"#{1,6} (.+)", line)
        if m:
            slug = _slug(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_the_pages_exist():
    assert (ROOT / "docs" / "math.md") in PAGES
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "](docs/math.md)" in readme


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_stay_inside_the_repository(page: Path):
    text = page.read_text(encoding="utf-8")
    assert "shared/DESIGN" not in text  # the design notes are not part of a clone
    links = [a or b for a, b in LINK.findall(_prose(text))]
    for target in links:
        assert not re.match(r"[a-z][a-z0-9+.-]*:", target, re.I), (page.name, target)
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.is_relative_to(ROOT), (page.name, target)
        assert dest.exists(), (page.name, target)
        if fragment and dest.suffix == ".md":
            assert fragment in _anchors(dest), (page.name, target)


def test_the_slug_rule():
    assert _slug('Automatic mu (`mu="auto"`)') == "automatic-mu-muauto"
    assert _slug("`adatune find-alpha`: the largest alpha") == (
        "adatune-find-alpha-the-largest-alpha"
    )
