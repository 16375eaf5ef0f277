"""YAML recipes: one file describes how to prune (like SparseML's recipes).

.. code-block:: yaml

    schedule:
      type: PolynomialDecay        # or polynomial_decay; OneShot, Constant, Geometric
      initial_sparsity: 0.0
      final_sparsity: 0.9
      begin_step: 0
      end_step: 1000
      frequency: 100
    criterion: magnitude           # a name from prunekit.criteria.CRITERIA
    pattern: unstructured          # unstructured | N:M | block:RxC | channel
    scope: global                  # global | layer
    include: ["encoder.*"]         # fqn globs (optional)
    exclude: ["classifier"]        # fqn globs (optional)

Loaded with ``yaml.safe_load`` (no code runs); unknown keys and bad values are rejected with the
key's name before anything is built.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from torch import nn

from prunekit.criteria import CRITERIA
from prunekit.patterns import get_pattern
from prunekit.pruner import Pruner
from prunekit.schedules import SCHEDULES, Schedule

__all__ = ["Recipe"]

_KEYS = {"schedule", "criterion", "pattern", "scope", "include", "exclude"}


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_")) if "_" in name or name.islower() else name


def _globs(value: Any, key: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise ValueError(f"recipe key '{key}' must be a glob or a list of globs, got {value!r}")


@dataclass
class Recipe:
    """A parsed recipe: a schedule plus ``prune`` arguments. Build with :meth:`from_yaml`."""

    schedule: Schedule
    criterion: str = "magnitude"
    pattern: str = "unstructured"
    scope: str = "global"
    include: list[str] | None = None
    exclude: list[str] | None = None
    source: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_yaml(cls, text_or_path: str | os.PathLike) -> "Recipe":
        """Parse a recipe from YAML text or a file path.

        Raises:
            ValueError: unknown keys, an unknown schedule type, or bad values (named in the message).
        """
        if not isinstance(text_or_path, (str, os.PathLike)):
            raise TypeError(f"from_yaml takes YAML text or a file path, got {type(text_or_path).__name__}")
        text = os.fspath(text_or_path)
        one_line = "\n" not in text.strip()
        if one_line and os.path.isdir(text):
            raise ValueError(f"recipe path {text!r} is a folder; give the .yaml file inside it")
        if one_line and os.path.isfile(text):
            with open(text) as f:
                text = f.read()
        elif one_line and ": " not in text:  # not a YAML mapping: it was meant as a path
            raise FileNotFoundError(f"recipe file {text!r} does not exist")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            where = getattr(e, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
            raise ValueError(f"the recipe is not valid YAML{at}: {getattr(e, 'problem', None) or e}") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> "Recipe":
        """Validate a recipe given as a dict (what the YAML file holds)."""
        if not isinstance(data, dict):
            raise ValueError(f"a recipe is a mapping with keys {sorted(_KEYS)}, got {type(data).__name__}")
        unknown = sorted(set(data) - _KEYS)
        if unknown:
            raise ValueError(f"unknown recipe keys {unknown}; valid keys are {sorted(_KEYS)}")
        if "schedule" not in data:
            raise ValueError("recipe key 'schedule' is required, e.g. {type: OneShot, sparsity: 0.9}")
        sched = data["schedule"]
        if not isinstance(sched, dict) or "type" not in sched:
            raise ValueError("recipe key 'schedule' must be a mapping with a 'type', e.g. {type: OneShot, sparsity: 0.9}")
        kind = _camel(str(sched["type"]))
        if kind not in SCHEDULES:
            raise ValueError(f"schedule type {sched['type']!r} is unknown; use one of {sorted(SCHEDULES)}")
        cls_ = SCHEDULES[kind]
        fields = {f.name for f in dataclasses.fields(cls_)}
        args = {k: v for k, v in sched.items() if k != "type"}
        bad = sorted(set(args) - fields)
        if bad:
            raise ValueError(f"unknown keys {bad} in schedule {kind}; it takes {sorted(fields)}")
        try:
            schedule = cls_(**args)
        except TypeError as e:
            if "missing" in str(e):
                missing = re.findall(r"'(\w+)'", str(e))
                raise ValueError(f"schedule {kind} needs {missing}") from None
            raise ValueError(f"schedule {kind}: {e}") from None
        except ValueError as e:
            raise ValueError(f"schedule {kind}: {e}") from None
        criterion = data.get("criterion", "magnitude")
        if not isinstance(criterion, str) or criterion.lower() not in CRITERIA:
            raise ValueError(f"recipe key 'criterion'={criterion!r} is unknown; use one of {sorted(CRITERIA)}")
        pattern = data.get("pattern", "unstructured")
        try:
            get_pattern(str(pattern))
        except ValueError as e:
            raise ValueError(f"recipe key 'pattern': {e}") from None
        scope = data.get("scope", "global")
        if scope not in ("global", "layer"):
            raise ValueError(f"recipe key 'scope'={scope!r} is unknown; use 'global' or 'layer'")
        return cls(schedule, criterion.lower(), str(pattern), scope, _globs(data.get("include"), "include"),
                   _globs(data.get("exclude"), "exclude"), data)

    def pruner(self, model: nn.Module, **kwargs) -> Pruner:
        """A :class:`prunekit.Pruner` for ``model`` following this recipe (``kwargs``: optimizer,
        log_dir, data, loss_fn...)."""
        return Pruner(model, self.schedule, criterion=self.criterion, pattern=self.pattern, scope=self.scope,
                      include=self.include, exclude=self.exclude, **kwargs)
