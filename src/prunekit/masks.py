"""Reversible pruning masks, held by ``torch.nn.utils.parametrize``.

A pruned weight keeps its original values in ``module.parametrizations.weight.original`` and a
boolean ``mask`` buffer (True = kept) in a :class:`PruningMask`; ``module.weight`` reads as
``where(mask, original, 0)``. Because the mask is applied on every read, pruned weights stay exactly
zero whatever an optimizer does to the original (momentum, weight decay), and because it is a plain
module with a buffer, ``copy.deepcopy``, ``state_dict``/``load_state_dict`` and ``torch.compile``
work (the three open pains of ``torch.nn.utils.prune``).

What a masked model's ``state_dict()`` holds: the names of the unpruned model, so any plain copy
of the architecture (``from_pretrained``, ``load_state_dict(..., strict=False)``) loads it with its
zeros, plus one boolean entry per mask:

* ``"fc1.weight"``: the stored original, which ``state_dict()`` first sets to zero under the mask,
  so it equals the weight forward sees and is still the live tensor (an EMA that copies into
  another model's state dict, as timm's does, keeps working). The values under a mask never reach
  forward, scoring or :func:`finalize`; they are dropped here as :func:`prunekit.save` drops them;
* ``"fc1.weight_mask"``: the mask, True = kept (``torch.nn.utils.prune``'s name).

``load_state_dict`` into a masked model maps both back onto the original and the mask (so a
checkpoint resumes with its masks); into a plain model, drop the ``*_mask`` entries or pass
``strict=False``. Checkpoints written before this layout (``parametrizations.weight.original`` /
``.0.mask`` keys) load into masked models unchanged.

Only this module attaches, reads, replaces and removes masks.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils import prune as torch_prune

from prunekit._statedict import add_hooks, remove_hooks, state_dict_copies
from prunekit.targets import Target, param_index

__all__ = [
    "PruningMask",
    "Undo",
    "state_dict_copies",
    "attach",
    "find_mask",
    "masks",
    "apply_masks",
    "finalize",
    "from_torch_prune",
    "effective",
]


def _module(model, fn: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn}: model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def _compiling() -> bool:
    fn = getattr(torch.compiler, "is_compiling", None)
    return bool(fn()) if fn is not None else False


class PruningMask(nn.Module):
    """The parametrization: ``where(mask, original, 0)``.

    In inference (eval mode, autograd off) the masked weight is cached until the original or the mask changes
    (their version counters), so a masked model runs about as fast as a finalized one, at the cost of
    one extra copy of each weight. Training never uses the cache.

    Args:
        mask: boolean tensor of the weight's shape, True = kept.
        pattern: how it was made (``"unstructured"``, ``"2:4"``...), shown by ``sparsity_report``.
    """

    def __init__(self, mask: torch.Tensor, pattern: str = "unstructured"):
        super().__init__()
        # a private, contiguous copy: expanded views (channel and block masks) cannot be written in place
        self.register_buffer("mask", mask.detach().to(torch.bool).clone(memory_format=torch.contiguous_format))
        self.pattern = str(pattern)
        self._cache: tuple | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or torch.is_grad_enabled() or _compiling():
            return torch.where(self.mask, x, 0)
        try:
            key = (x.data_ptr(), x._version, self.mask.data_ptr(), self.mask._version, x.dtype, x.device)
        except RuntimeError:  # inference tensors carry no version counter
            return torch.where(self.mask, x, 0)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, torch.where(self.mask, x, 0))
        return self._cache[1]

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = None  # a copy starts without the cached masked weight
        return state

    def extra_repr(self) -> str:
        kept = int(self.mask.sum())
        return f"pattern={self.pattern!r}, kept={kept}/{self.mask.numel()}"


def _own_class(module: nn.Module) -> None:
    """Give a parametrized module a class of its own before its parametrizations change.

    ``copy.deepcopy`` of a parametrized module shares the generated ``Parametrized*`` class, and
    ``parametrize`` adds and deletes properties on that class, so changing the copy would change the
    original (seen with torch 2.14: the original lost ``weight``). A fresh class with the same base
    breaks the link; ``remove_parametrizations`` still restores the right base class.
    """
    cls = type(module)
    if not parametrize.is_parametrized(module):
        return
    module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))


def find_mask(module: nn.Module, name: str) -> PruningMask | None:
    """The :class:`PruningMask` on ``module.name``, or None."""
    if not parametrize.is_parametrized(module, name):
        return None
    for p in module.parametrizations[name]:
        if isinstance(p, PruningMask):
            return p
    return None


def effective(module: nn.Module, name: str) -> torch.Tensor:
    """The value forward sees for ``module.name`` (masked), detached."""
    with torch.no_grad():
        return getattr(module, name).detach()


def attach(target: Target, mask: torch.Tensor, pattern: str) -> None:
    """Set ``target``'s mask to ``mask`` (replacing any), on every alias of a tied tensor.

    Changes: registers one shared :class:`PruningMask` on each holder the first time; later calls
    overwrite its buffer in place (so optimizers and compiled graphs keep their references).
    """
    existing = None
    for module, name, _, _ in target.aliases:
        existing = existing or find_mask(module, name)
    if existing is None:
        existing = PruningMask(mask, pattern)
        existing.train(target.module.training)
    else:
        existing.mask.copy_(mask.to(existing.mask.device))
        existing.pattern = str(pattern)
    seen = set()
    for module, name, _, _ in target.aliases:
        if (id(module), name) in seen:
            continue
        seen.add((id(module), name))
        if find_mask(module, name) is None:
            _own_class(module)
            parametrize.register_parametrization(module, name, existing, unsafe=True)
            add_hooks(module)


class Undo:
    """What a multi-layer operation changed, so that a failure part-way can put it all back.

    Call :meth:`touch` on a target before changing its weight or mask; :meth:`restore` returns every
    touched weight to its value and mask (or to having none) at that moment. Holds one copy of each
    touched weight until the operation ends.

    Example:
        >>> undo = Undo()
        >>> try:
        ...     for t in targets:
        ...         undo.touch(t); change(t)
        ... except BaseException:
        ...     undo.restore(); raise
    """

    def __init__(self):
        self._saved: dict[int, tuple] = {}

    def touch(self, target: Target) -> None:
        if id(target) in self._saved:
            return
        pm = find_mask(target.module, target.name)
        state = None if pm is None else (pm.mask.detach().clone(), pm.pattern)
        self._saved[id(target)] = (target, target.param.detach().clone(), state)

    def restore(self) -> None:
        for target, value, state in reversed(list(self._saved.values())):
            pm = find_mask(target.module, target.name)
            if state is None and pm is not None:
                for module, name, _, _ in target.aliases:
                    if find_mask(module, name) is not None:
                        _own_class(module)
                        parametrize.remove_parametrizations(module, name, leave_parametrized=False)
                        if not parametrize.is_parametrized(module):
                            remove_hooks(module)
            elif state is not None:
                pm.mask.copy_(state[0])
                pm.pattern = state[1]
            with torch.no_grad():
                target.param.copy_(value)
        self._saved.clear()


def masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every mask in the model, by parameter name in the unpruned model.

    Returns:
        ``{"layer1.0.conv1.weight": bool tensor}`` (copies; True = kept). Tied tensors appear once,
        under their first name.

    Example:
        >>> m = nn.Linear(8, 4); _ = prunekit.prune(m, 0.5)
        >>> prunekit.masks(m)["weight"].sum().item()
        16
    """
    _module(model, "masks")
    out = {}
    for fqn, t in param_index(model).items():
        if fqn != t.fqn:
            continue
        pm = find_mask(t.module, t.name)
        if pm is not None:
            out[fqn] = pm.mask.detach().clone()
    return out


def apply_masks(model: nn.Module, mask_dict: Mapping[str, torch.Tensor], pattern: str = "unstructured") -> None:
    """Attach saved masks (lottery tickets, resuming): each named weight gets exactly that mask.

    Args:
        model: changed in place; weights not named keep whatever mask they had.
        mask_dict: ``{parameter name: mask}``, names as :func:`masks` returns them; a mask is bool or
            0/1 of the weight's shape (True / 1 = kept).
        pattern: recorded for the report.

    Raises:
        KeyError: a name the model does not have (the message lists some that it has).
        ValueError: a mask of the wrong shape or with values other than 0/1. Nothing is changed then.

    Example:
        >>> saved = prunekit.masks(pruned); prunekit.apply_masks(fresh_model, saved)
    """
    _module(model, "apply_masks")
    if not isinstance(mask_dict, Mapping):
        raise TypeError(f"masks must be a dict {{name: bool tensor}}, got {type(mask_dict).__name__}")
    index = param_index(model)
    plan = []
    for name, mask in mask_dict.items():
        if name not in index:
            raise KeyError(
                f"apply_masks: the model has no parameter {name!r}; it has e.g. {sorted(index)[:8]}"
            )
        target = index[name]
        shape = effective(target.module, target.name).shape
        if not isinstance(mask, torch.Tensor) or mask.shape != shape:
            got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"apply_masks: mask for {name!r} has shape {got}, the weight has {tuple(shape)}")
        if mask.dtype != torch.bool and not ((mask == 0) | (mask == 1)).all():
            raise ValueError(f"apply_masks: mask for {name!r} must be bool or 0/1 (True/1 = kept)")
        plan.append((target, mask.to(torch.bool).clone()))
    for target, mask in plan:
        attach(target, mask.to(target.param.device), pattern)


def _masked_groups(model: nn.Module) -> list[tuple[PruningMask, list[tuple[nn.Module, str]]]]:
    groups: dict[int, tuple] = {}
    for module in model.modules():
        if not parametrize.is_parametrized(module):
            continue
        for name in list(module.parametrizations):
            pm = find_mask(module, name)
            if pm is not None:
                groups.setdefault(id(pm), (pm, []))[1].append((module, name))
    return list(groups.values())


def finalize(model: nn.Module) -> nn.Module:
    """Bake the zeros in and remove the masks (``torch.nn.utils.prune.remove`` for every weight).

    Changes: every masked weight becomes a plain parameter holding ``where(mask, original, 0)``; the
    ``nn.Parameter`` objects stay the same (optimizers keep working) and ties stay tied. Other
    parametrizations stacked on a masked weight are baked in too. Safe on a ``copy.deepcopy`` of a
    pruned model: the original keeps its masks.

    Returns:
        the same model, for chaining.

    Example:
        >>> prunekit.prune(model, 0.9); prunekit.finalize(model)   # plain nn.Linear/Conv again
    """
    _module(model, "finalize")
    groups = _masked_groups(model)
    for pm, holders in groups:  # checked for every tensor before any is changed: all or nothing
        module, name = holders[0]
        if module.parametrizations[name].original.shape != effective(module, name).shape:
            raise ValueError(f"cannot finalize: a parametrization changes the shape of {name!r}; the model is unchanged")
    for pm, holders in groups:
        module, name = holders[0]
        baked = effective(module, name).clone()
        original = None
        for module, name in holders:
            _own_class(module)
            plist = module.parametrizations[name]
            if original is None:
                original = plist.original
            parametrize.remove_parametrizations(module, name, leave_parametrized=False)
            if not parametrize.is_parametrized(module):
                remove_hooks(module)
        with torch.no_grad():
            original.copy_(baked)
    return model


def from_torch_prune(model: nn.Module) -> nn.Module:
    """Adopt masks made by ``torch.nn.utils.prune`` (``weight_orig`` + ``weight_mask`` + hook).

    Changes: each such weight becomes a prunekit mask over the same original values; the forward
    pre-hook, ``*_orig`` parameter and ``*_mask`` buffer are removed. The model computes the same
    outputs before and after.

    Raises:
        ValueError: the model has no ``torch.nn.utils.prune`` masks.

    Example:
        >>> torch.nn.utils.prune.l1_unstructured(model.fc, "weight", 0.5)
        >>> prunekit.from_torch_prune(model); prunekit.masks(model)["fc.weight"]
    """
    _module(model, "from_torch_prune")
    found = []
    for module in model.modules():
        for hook_id, hook in list(module._forward_pre_hooks.items()):
            if isinstance(hook, torch_prune.BasePruningMethod):
                found.append((module, hook_id, hook._tensor_name))
    if not found:
        raise ValueError("from_torch_prune: the model has no torch.nn.utils.prune masks (no *_orig/*_mask pairs)")
    adopted = []
    for module, hook_id, name in found:
        mask = module._buffers.pop(name + "_mask") != 0
        original = module._parameters.pop(name + "_orig")
        del module._forward_pre_hooks[hook_id]
        if name in module.__dict__:
            delattr(module, name)
        module.register_parameter(name, original)
        adopted.append((module, name, mask))
    by_holder = {(id(m), n): t for t in param_index(model).values() for m, n, _, _ in t.aliases}
    for module, name, mask in adopted:
        attach(by_holder[(id(module), name)], mask, "unstructured")
    return model
