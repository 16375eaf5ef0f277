"""The README's Python examples run as written, in order, in one namespace."""

from __future__ import annotations

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 5
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md[python block {i}]", "exec"), namespace)
    assert namespace["pk"].sparsity_report(namespace["fresh"]).nonzeros > 0


def test_readme_shows_both_quick_start_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text
