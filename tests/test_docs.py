"""The documentation keeps up with the code: every make target and variable is explained in
docs/variables.md, every relative link of README.md and docs/ leads somewhere, and the README
stays short."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAKEFILE = (ROOT / "Makefile").read_text(encoding="utf-8")
VARIABLES_DOC = ROOT / "docs" / "variables.md"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 300

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)


def make_targets() -> list[str]:
    """Targets named in ``.PHONY`` and those documented with a ``##`` comment."""
    phony = re.search(r"^\.PHONY:(.*)$", MAKEFILE, re.M)
    names = set(phony.group(1).split()) if phony else set()
    names |= set(re.findall(r"^([a-z][a-z0-9-]*):.*## ", MAKEFILE, re.M))
    return sorted(names)


def make_variables() -> list[str]:
    return sorted(set(re.findall(r"^([A-Z][A-Z0-9_]*) \?=", MAKEFILE, re.M)))


def make_default(name: str) -> str:
    """The default of ``NAME ?= value## meaning`` (empty when none)."""
    return re.search(rf"^{name} \?= ?([^#\n]*?)\s*(?:##|$)", MAKEFILE, re.M).group(1).strip()


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())  # \w keeps letters, digits and _
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {slug(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M)}


def relative_links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)  # code spans are not links
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I)]


def test_the_makefile_is_parsed():
    # the checks below are only as good as the parse: it must find the well-known names
    assert {"help", "features", "compare", "audit", "report", "predict", "demo", "test"} <= set(make_targets())
    assert {"IN", "FEATURES", "OUT", "BACKBONE", "HEADS", "SEED", "FOLDS"} <= set(make_variables())


@pytest.mark.parametrize("target", make_targets())
def test_every_make_target_is_documented(target):
    text = VARIABLES_DOC.read_text(encoding="utf-8")
    assert f"`make {target}`" in text, (
        f"docs/variables.md does not explain `make {target}`; add a row to its targets table")


@pytest.mark.parametrize("name", make_variables())
def test_every_make_variable_is_documented(name):
    text = VARIABLES_DOC.read_text(encoding="utf-8")
    row = re.search(rf"^\| `{name}` \|([^|]*)\|", text, re.M)
    assert row, f"docs/variables.md has no row for the variable `{name}`; add one with its default and meaning"
    documented = row.group(1).strip().strip("`")
    assert documented == make_default(name), (
        f"docs/variables.md gives `{name}` the default {documented!r}, the Makefile {make_default(name)!r}")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest})")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading with the anchor #{anchor} in {dest.name})")
    assert not broken, f"{page.relative_to(ROOT)} has broken links: " + "; ".join(broken)


def test_the_link_check_sees_links():
    # a checker that finds no link would pass on anything
    links = relative_links(ROOT / "README.md")
    assert any(t.startswith("docs/") for t in links), links


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines, more than {README_MAX_LINES}: move the detail into docs/")
