"""The README's Keras section runs as written on this process's backend (torch in the main suite,
TensorFlow in tests/keras/test_backends.py's run), and prunes what it says."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_keras_section_runs():
    section = README.read_text().split("### Keras 3:", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1
    namespace: dict = {}
    exec(compile(blocks[0], "README.md[keras]", "exec"), namespace)
    report = namespace["pkk"].sparsity_report(namespace["small"])
    assert report.sparsity >= 0.79
    assert namespace["pkk"].sparsity_report(namespace["model"]).sparsity == 0.0  # the original is untouched
