"""YAML recipes: parsing, building a Pruner, and rejecting unknown keys and bad values by name."""

from __future__ import annotations

import pytest

import prunekit as pk
from prunekit.recipes import Recipe
from tests.helpers import Net

GOOD = """
schedule:
  type: polynomial_decay
  initial_sparsity: 0.0
  final_sparsity: 0.75
  begin_step: 0
  end_step: 4
  frequency: 2
criterion: l2
pattern: unstructured
scope: layer
include: ["fc*"]
"""


def test_recipe_builds_a_pruner_that_follows_it(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(GOOD)
    recipe = Recipe.from_yaml(path)
    assert recipe.schedule == pk.schedules.PolynomialDecay(0.0, 0.75, 0, 4, frequency=2)
    model = Net()
    pruner = recipe.pruner(model)
    for _ in range(5):
        pruner.step()
    report = pk.sparsity_report(model)
    assert report["fc1.weight"].sparsity == pytest.approx(0.75, abs=1e-3)
    assert report["conv.weight"].pattern == "-"


def test_yaml_cannot_run_code():
    with pytest.raises(Exception) as err:
        Recipe.from_yaml("schedule: !!python/object/apply:os.system ['echo hi']\n")
    assert "could not determine a constructor" in str(err.value) and isinstance(err.value, ValueError)


@pytest.mark.parametrize(
    "text, words",
    [
        ("schedule: {type: OneShot, sparsity: 0.5}\nsparsty: 0.9\n", "unknown recipe keys \\['sparsty'\\]"),
        ("schedule: {type: OneShot, sparsity: 0.5, begin: 3}\n", "unknown keys \\['begin'\\] in schedule OneShot"),
        ("schedule: {type: Cosine, sparsity: 0.5}\n", "schedule type 'Cosine' is unknown"),
        ("schedule: {type: OneShot, sparsity: 1.5}\n", "sparsity=1.5 is outside"),
        ("schedule: {type: PolynomialDecay, initial_sparsity: 0, final_sparsity: 0.5}\n", "needs \\['begin_step', 'end_step'\\]"),
        ("schedule: {type: OneShot, sparsity: 0.5}\ncriterion: biggest\n", "'criterion'='biggest' is unknown"),
        ("schedule: {type: OneShot, sparsity: 0.5}\npattern: 3:2\n", "'pattern'"),
        ("schedule: {type: OneShot, sparsity: 0.5}\nscope: net\n", "'scope'='net'"),
        ("schedule: {type: OneShot, sparsity: 0.5}\ninclude: 3\n", "'include' must be a glob"),
        ("criterion: l2\n", "'schedule' is required"),
        ("- a\n- b\n", "a recipe is a mapping"),
    ],
)
def test_bad_recipes_name_the_key(text, words):
    with pytest.raises(ValueError, match=words):
        Recipe.from_yaml(text)


def test_a_missing_recipe_file_is_named_not_blamed_on_the_yaml(tmp_path):
    with pytest.raises(FileNotFoundError, match="recipe file .*missing.yaml' does not exist"):
        Recipe.from_yaml(str(tmp_path / "missing.yaml"))
    with pytest.raises(ValueError, match="is a folder"):
        Recipe.from_yaml(str(tmp_path))
    with pytest.raises(ValueError, match="not valid YAML at line 2"):
        Recipe.from_yaml("schedule: {type: OneShot\n  sparsity: [0.5\n")
