"""Which groups may shrink: ``include=`` and ``exclude=`` as :func:`prunekit.prune` reads them.

The selectors are :mod:`prunekit.targets`' (module types, name globs, ``(module, fqn) -> bool``
predicates, or lists of these; the default selects every Linear and Conv weight) and resolve through
:func:`prunekit.targets.find_targets`, with its rules: a glob that matches nothing is an error, and
so is a selection that matches no parameter. A group is the unit of a decision, so a group may
shrink when

* none of the modules or parameters it touches is excluded: an excluded layer keeps every channel
  coupled to it (``exclude="stem"`` keeps the residual width the stem feeds);
* every Linear and Conv weight it touches is selected: a group only partly selected is kept, since
  removing its channels would reshape a layer that ``include`` leaves out (``include="layer1"``
  shrinks the channels inside ``layer1``, not the width it shares with the rest of the network);
  biases, norms, embeddings and tokens follow the layers they are coupled to;
* and it touches at least one selected parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from torch import nn

from prunekit.targets import DEFAULT_TYPES, Selector, all_params, find_targets, matches, selector_items

__all__ = ["Selection", "select"]


@dataclass
class Selection:
    """What ``include`` / ``exclude`` picked, by tensor name (every alias of a tied tensor).

    Attributes:
        selected: parameters ``find_targets(model, include, exclude)`` returns.
        layers: the weights of every Linear and Conv layer (each must be selected for its groups to shrink).
        excluded: parameters and buffers of excluded modules, and excluded parameters.
    """

    selected: set[str] = field(default_factory=set)
    layers: set[str] = field(default_factory=set)
    excluded: set[str] = field(default_factory=set)

    def verdict(self, fqns: Iterable[str]) -> str:
        """Why a group touching tensors ``fqns`` must stay, or "" when it may shrink."""
        fqns = list(fqns)
        excluded = [f for f in fqns if f in self.excluded]
        if excluded:
            return f"excluded ({excluded[0]})"
        left_out = [f for f in fqns if f in self.layers and f not in self.selected]
        if left_out:
            return f"not selected: include= leaves out {left_out[0]}, coupled to it"
        if not any(f in self.selected for f in fqns):
            return "not selected by include="
        return ""


def select(model: nn.Module, include: Selector = None, exclude: Selector = None) -> Selection:
    """Resolve ``include`` / ``exclude`` on ``model`` (changes nothing).

    Raises:
        ValueError / TypeError: as :func:`prunekit.targets.find_targets` (a glob that matches nothing,
            a selection that matches no parameter, a selector of an unknown form).
    """
    chosen = find_targets(model, include, exclude)
    out = Selection()
    out.selected = {f for t in chosen for _, _, f, _ in t.aliases}
    for t in all_params(model):
        if any(n == "weight" and isinstance(m, DEFAULT_TYPES) for m, n, _, _ in t.aliases):
            out.layers.update(f for _, _, f, _ in t.aliases)
    items = selector_items(exclude)
    if items:
        out.excluded = _excluded(model, items)
    return out


def _excluded(model: nn.Module, items: list[Any]) -> set[str]:
    """Every name of each parameter or buffer that an exclude item picks, itself or by its module."""
    holders: dict[int, list[str]] = {}
    hit: set[int] = set()
    for mfqn, module in model.named_modules(remove_duplicate=False):
        whole = any(matches(i, module, mfqn, "weight", None) for i in items)  # the module, by type, name or predicate
        for kind in (module._parameters, module._buffers):
            for name, tensor in kind.items():
                if tensor is None:
                    continue
                holders.setdefault(id(tensor), []).append(f"{mfqn}.{name}" if mfqn else name)
                if whole or any(matches(i, module, mfqn, name, None) for i in items):
                    hit.add(id(tensor))
    return {f for key in hit for f in holders[key]}
