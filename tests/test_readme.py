"""The README's Python examples run as written, in order, in one namespace; the README and docs/*.md
link only to files (and headings) that exist."""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKDOWN = [README, *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^```.*?^```", flags=re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.slow
@pytest.mark.usefixtures("sparse_kernels")
def test_readme_examples_run():
    text = README.read_text()
    blocks = python_blocks(text)
    assert len(blocks) >= 5
    tour = text.split("\n## Tour\n", 1)[1].split("\n## ", 1)[0]
    assert python_blocks(tour) == blocks, "every Python example belongs to the tour, and all of them run"
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md[python block {i}]", "exec"), namespace)
    assert namespace["pk"].sparsity_report(namespace["fresh"]).nonzeros > 0


def test_readme_shows_both_quick_start_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {slug(m) for m in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", text, flags=re.M)}


def relative_links(path: pathlib.Path) -> list[str]:
    text = FENCE.sub("", path.read_text())
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code is not a link
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", t, flags=re.I)]


@pytest.mark.parametrize("doc", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_files_that_exist(doc):
    links = relative_links(doc)
    broken = []
    for link in links:
        target, _, anchor = link.partition("#")
        path = (doc.parent / target).resolve() if target else doc
        if not path.exists() or ROOT not in [path, *path.parents]:
            broken.append(f"{link} (no such file in the repository)")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{link} (no heading #{anchor} in {path.name})")
    assert not broken, f"{doc.relative_to(ROOT)} links to: " + ", ".join(broken)


def test_link_checker_sees_the_links():
    assert "docs/benchmarks.md" in relative_links(README)
    assert "../bench/results/sparse_runtime.md" in relative_links(ROOT / "docs" / "benchmarks.md")
    assert slug("The decision matrix: `advise`") == "the-decision-matrix-advise"
