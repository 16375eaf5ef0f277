"""Which parameters are pruned.

A *target* is one parameter tensor of one module, named by its fully qualified name in the
unpruned model (``"layer1.0.conv1.weight"``), even after a mask has been attached with
``torch.nn.utils.parametrize``. Tied parameters (one ``nn.Parameter`` held by several modules)
form one target with several aliases, so they are scored once and masked consistently.

Selection (``include`` / ``exclude``) takes one item or a list of items, each one of:

* a module type (``nn.Linear``, or a tuple of types): that module's ``weight``;
* a glob on names (``"encoder.*"``, ``"fc1"``, ``"layer1"``): the ``weight`` of every Linear/Conv
  module whose name, or the name of a module containing it, matches (``"layer1"`` selects
  everything inside ``layer1``, as ``exclude`` in ``prunekit.structured`` does); or, when the glob
  ends with a parameter's name (``"*.bias"``, ``"emb.weight"``, ``"*.LayerNorm.weight"``), every
  parameter whose full name matches, whatever its module;
* a predicate ``(module, fqn) -> bool`` on modules (torchao's filter): that module's ``weight``.

The default selects the weights of ``nn.Linear`` and every convolution.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Union

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["DEFAULT_TYPES", "Target", "Selector", "find_targets", "selector_items", "all_params", "param_index", "candidates", "matches",
           "torch_pruned"]

Selector = Union[type, tuple, str, Callable[[nn.Module, str], bool], Iterable[Any], None]

DEFAULT_TYPES = (nn.Linear, nn.modules.conv._ConvNd)


@dataclass
class Target:
    """One prunable parameter.

    Attributes:
        fqn: full name in the unpruned model, e.g. ``"fc1.weight"``.
        module: the module that owns it (first alias).
        module_fqn: that module's name (``"fc1"``).
        name: the parameter's name inside the module (``"weight"``).
        aliases: every ``(module, name, fqn, module_fqn)`` holding this same tensor (ties), first
            included.
    """

    fqn: str
    module: nn.Module
    module_fqn: str
    name: str
    aliases: list = field(default_factory=list)

    @property
    def param(self) -> torch.Tensor:
        """The stored tensor: the unmasked original when a mask is attached."""
        return raw_param(self.module, self.name)

    @property
    def out_dim(self) -> int:
        """The dimension that indexes output channels / features."""
        return 1 if isinstance(self.module, nn.modules.conv._ConvTransposeNd) else 0

    @property
    def in_dim(self) -> int | None:
        """The dimension that indexes input channels / features (None for 1-D tensors)."""
        if self.param.dim() < 2:
            return None
        return 0 if isinstance(self.module, nn.modules.conv._ConvTransposeNd) else 1


def raw_param(module: nn.Module, name: str) -> torch.Tensor:
    """The stored tensor ``module.name``: the original under a parametrization, else the parameter."""
    if parametrize.is_parametrized(module, name):
        return module.parametrizations[name].original
    return getattr(module, name)


def candidates(model: nn.Module) -> list[tuple[str, nn.Module, str, torch.Tensor]]:
    """Every ``(module_fqn, module, param_name, tensor)`` of the model, parametrizations unwrapped.

    Tied tensors appear once per holder, in ``named_modules`` order.
    """
    out = []
    for mfqn, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, parametrize.ParametrizationList) or ".parametrizations." in f".{mfqn}.":
            continue
        names = list(module._parameters)
        if parametrize.is_parametrized(module):
            names += [n for n in module.parametrizations if n not in names]
        for pname in names:
            tensor = raw_param(module, pname)
            if tensor is None:
                continue
            out.append((mfqn, module, pname, tensor))
    return out


def _join(mfqn: str, pname: str) -> str:
    return f"{mfqn}.{pname}" if mfqn else pname


def selector_items(selector: Selector) -> list:
    """One ``include``/``exclude`` selector as a list of items (a type, a glob, a predicate, a tuple of types).

    Raises:
        TypeError: an item of an unknown form.
    """
    if selector is None:
        return []
    if isinstance(selector, (str, type)) or callable(selector) or _types(selector):
        return [selector]
    try:
        return list(selector)
    except TypeError:
        raise TypeError(
            f"include/exclude item {selector!r} is not understood; use a module type (nn.Linear), "
            "a name glob ('encoder.*', '*.bias'), a predicate (module, fqn) -> bool, or a list of these"
        ) from None


def _types(item: Any) -> bool:
    return isinstance(item, tuple) and len(item) > 0 and all(isinstance(x, type) for x in item)


def matches(item: Any, module: nn.Module, mfqn: str, pname: str, module_types: tuple | None = DEFAULT_TYPES) -> bool:
    """Whether one selector item picks parameter ``pname`` of ``module`` (named ``mfqn``).

    ``module_types`` limits what a module-name glob selects (Linear/Conv for ``include``); None lets
    it select any module's weight (``exclude`` and per-layer sparsity keys).
    """
    fqn = _join(mfqn, pname)
    if isinstance(item, type) or _types(item):
        return pname == "weight" and isinstance(module, item)
    if isinstance(item, str):
        if item.rsplit(".", 1)[-1] == pname and fnmatch.fnmatchcase(fqn, item):
            return True
        typed = module_types is None or isinstance(module, module_types)
        return pname == "weight" and typed and _inside(mfqn, item)
    if callable(item):
        return pname == "weight" and bool(item(module, mfqn))
    raise TypeError(
        f"include/exclude item {item!r} is not understood; use a module type (nn.Linear), "
        "a name glob ('encoder.*', '*.bias') or a predicate (module, fqn) -> bool"
    )


def _inside(mfqn: str, glob: str) -> bool:
    """Whether module ``mfqn`` or a module containing it matches ``glob``."""
    parts = mfqn.split(".") if mfqn else [""]
    return any(fnmatch.fnmatchcase(".".join(parts[:i]), glob) for i in range(1, len(parts) + 1))


def all_params(model: nn.Module) -> list[Target]:
    """One Target per distinct tensor, in model order, with every holder as an alias."""
    holders: dict[int, list] = {}
    for mfqn, module, pname, tensor in candidates(model):
        holders.setdefault(id(tensor), []).append((module, pname, _join(mfqn, pname), mfqn))
    out = []
    for group in holders.values():
        module, pname, fqn, mfqn = group[0]
        out.append(Target(fqn, module, mfqn, pname, group))
    return out


def param_index(model: nn.Module) -> dict[str, Target]:
    """Every parameter name (aliases included, unpruned naming) to its Target."""
    return {f: t for t in all_params(model) for _, _, f, _ in t.aliases}


def torch_pruned(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """``(module_fqn, module, tensor_name)`` for every tensor masked by ``torch.nn.utils.prune``
    (a ``<name>_orig`` parameter, a ``<name>_mask`` buffer and a forward pre-hook)."""
    from torch.nn.utils import prune as torch_prune

    out = []
    for mfqn, module in model.named_modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, torch_prune.BasePruningMethod):
                out.append((mfqn, module, hook._tensor_name))
    return out


def _check_globs(model: nn.Module, selector: Selector, arg: str) -> None:
    """Every name glob in ``selector`` must match some module or parameter of ``model``."""
    names = None
    for item in selector_items(selector):
        if not isinstance(item, str):
            continue
        if names is None:
            names = [n for n, _ in model.named_modules() if ".parametrizations." not in f".{n}."]
            names += [_join(mf, p) for mf, _, p, _ in candidates(model)]
        if not any(fnmatch.fnmatchcase(n, item) for n in names):
            close = difflib.get_close_matches(item, names, n=5, cutoff=0.4) or [n for n in names if n][:6]
            raise ValueError(
                f"{arg}={item!r} matches no module or parameter name in the model; names look like {close}. "
                "Globs match whole names: use 'layer1.*' for everything under layer1, '*.bias' for every bias"
            )


def find_targets(model: nn.Module, include: Selector = None, exclude: Selector = None) -> list[Target]:
    """Select the parameters to prune.

    Args:
        model: the model; it is not changed.
        include: what to prune (see the module docstring); default: Linear and Conv weights.
        exclude: what to leave alone, same forms as ``include``.

    Returns:
        Targets in model order, one per distinct tensor (ties merged, aliases kept).

    Raises:
        ValueError: nothing matched, a name glob matches nothing in the model (a typo would otherwise
            silently prune or keep the wrong layers), a matched tensor is not floating point, or the
            model holds ``torch.nn.utils.prune`` masks (adopt them with ``from_torch_prune`` first).

    Example:
        >>> m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> [t.fqn for t in find_targets(m, exclude="1")]
        ['0.weight']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    legacy = torch_pruned(model)
    if legacy:
        names = [_join(mf, n) for mf, _, n in legacy][:5]
        raise ValueError(
            f"{names} carry torch.nn.utils.prune masks (weight_orig + weight_mask), which prunekit would not "
            "see; adopt them first with prunekit.from_torch_prune(model), then prune again"
        )
    _check_globs(model, include, "include")
    _check_globs(model, exclude, "exclude")
    inc, exc = selector_items(include), selector_items(exclude)
    if not inc:
        inc = [DEFAULT_TYPES]
    targets = []
    for target in all_params(model):
        picked = any(matches(i, m, mf, n) for m, n, _, mf in target.aliases for i in inc)
        dropped = any(matches(i, m, mf, n, None) for m, n, _, mf in target.aliases for i in exc)
        if not picked or dropped:
            continue
        fqn = target.fqn
        if not torch.is_floating_point(target.param):
            raise ValueError(
                f"parameter '{fqn}' has dtype {target.param.dtype}; only floating-point tensors can be "
                "pruned. Leave it out with exclude=..."
            )
        targets.append(target)
    if not targets:
        names = sorted({type(m).__name__ for _, m, _, _ in candidates(model)})
        raise ValueError(
            f"include={include!r} / exclude={exclude!r} matched no parameters. The model's module types "
            f"are {names}; pass a module type, a name glob such as 'layer1.*', or a predicate "
            "(module, fqn) -> bool"
        )
    return targets
