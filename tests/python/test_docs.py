"""Docs live in the repository: every ``docs/<file>.md §N`` that a source comment cites exists
and has a section ``## N.``, and nothing cites a design document that is not in the repo."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [
    p
    for d in ("src", "tests", "benchmarks", "scripts")
    for p in (ROOT / d).rglob("*")
    if p.suffix in (".py", ".h", ".cc", ".sh", ".toml", ".md") and p.is_file()
]


def test_cited_doc_sections_exist() -> None:
    cites = [
        (p, m.group(1), m.group(2))
        for p in SOURCES
        for m in re.finditer(r"(docs/[\w.-]+\.md)\s*§(\d+)", p.read_text(errors="replace"))
    ]
    assert len(cites) >= 8  # the conventions and exactness rules are cited across the code
    for path, doc, sec in cites:
        text = (ROOT / doc).read_text()
        assert re.search(rf"^## {sec}\. ", text, re.M), (
            f"{path.relative_to(ROOT)} cites {doc} §{sec}, which is missing"
        )


def test_no_citation_of_a_document_outside_the_repo() -> None:
    for p in SOURCES:
        assert not re.search(r"ARCHITECTURE (section|sec\.|\d)", p.read_text(errors="replace")), p


def test_readme_links_resolve() -> None:
    for link in re.findall(r"\]\(((?:docs/)[^)#]+)\)", (ROOT / "README.md").read_text()):
        assert (ROOT / link).is_file(), link
