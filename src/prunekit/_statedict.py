"""How a masked model appears in state dicts (the layout is described in :mod:`prunekit.masks`).

Hooks on each masked module write ``fc1.weight`` (the live original, zeroed under the mask) and
``fc1.weight_mask`` instead of torch's parametrization names, and map both back on
``load_state_dict``; :func:`state_dict_copies` gives masked copies instead, for prunekit's own
readers, so that saving changes nothing.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["state_dict_copies", "add_hooks", "remove_hooks", "plain_masks"]


def plain_masks(module: nn.Module):
    """``(name, PruningMask)`` for each tensor of ``module`` whose only parametrization is a mask."""
    from prunekit.masks import PruningMask  # masks imports this module: resolved at call time

    if not parametrize.is_parametrized(module):
        return []
    return [(n, plist[0]) for n, plist in module.parametrizations.items()
            if len(plist) == 1 and isinstance(plist[0], PruningMask)]


_COPIES = contextvars.ContextVar("prunekit_state_dict_copies", default=False)


@contextlib.contextmanager
def state_dict_copies():
    """Within this block a masked model's ``state_dict()`` gives masked copies and leaves the stored
    originals alone (prunekit's own readers use it, so that saving or checking changes nothing)."""
    token = _COPIES.set(True)
    try:
        yield
    finally:
        _COPIES.reset(token)


def _state_dict_hook(module, state_dict, prefix, local_metadata) -> None:
    """Write masked tensors under their plain names, zeros in (see the module docstring)."""
    for name, pm in plain_masks(module):
        okey, mkey = f"{prefix}parametrizations.{name}.original", f"{prefix}parametrizations.{name}.0.mask"
        if okey not in state_dict or mkey not in state_dict:
            continue
        original, mask = state_dict.pop(okey), state_dict.pop(mkey)
        try:
            if _COPIES.get():
                raise RuntimeError("copies asked for")
            with torch.no_grad():
                module.parametrizations[name].original.masked_fill_(~pm.mask, 0)
        except RuntimeError:  # copies asked for, or an inference tensor: a masked copy, not the live tensor
            original = torch.where(mask, original.detach(), 0)
        state_dict[prefix + name] = original
        state_dict[f"{prefix}{name}_mask"] = mask


def _legacy_state_dict_hook(module, state_dict, prefix, local_metadata) -> None:
    _state_dict_hook(module, state_dict, prefix, local_metadata)


def _load_hook(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs) -> None:
    """Map plain names (``weight``, ``weight_mask``) back onto the original and the mask."""
    for name, _ in plain_masks(module):
        okey, mkey = f"{prefix}parametrizations.{name}.original", f"{prefix}parametrizations.{name}.0.mask"
        if prefix + name in state_dict and okey not in state_dict:
            state_dict[okey] = state_dict.pop(prefix + name)
        if f"{prefix}{name}_mask" in state_dict and mkey not in state_dict:
            state_dict[mkey] = state_dict.pop(f"{prefix}{name}_mask")


def _load_post_hook(module, incompatible_keys) -> None:
    """Report a missing mask or weight under the plain name the state dict uses."""
    keys = incompatible_keys.missing_keys
    for i, key in enumerate(keys):
        head, sep, tail = key.rpartition("parametrizations.")
        if not sep:
            continue
        if tail.endswith(".0.mask"):
            keys[i] = f"{head}{tail[: -len('.0.mask')]}_mask"
        elif tail.endswith(".original"):
            keys[i] = f"{head}{tail[: -len('.original')]}"


_HOOKS = (_state_dict_hook, _legacy_state_dict_hook, _load_hook, _load_post_hook)


def _is_ours(hook) -> bool:
    return getattr(hook, "hook", hook) in _HOOKS  # load pre-hooks are wrapped by torch


def add_hooks(module: nn.Module) -> None:
    if any(_is_ours(h) for h in module._state_dict_hooks.values()):
        return
    if hasattr(module, "register_state_dict_post_hook"):
        module.register_state_dict_post_hook(_state_dict_hook)
    else:  # torch < 2.5
        module._register_state_dict_hook(_legacy_state_dict_hook)
    module._register_load_state_dict_pre_hook(_load_hook, with_module=True)
    module.register_load_state_dict_post_hook(_load_post_hook)


def remove_hooks(module: nn.Module) -> None:
    for hooks in (module._state_dict_hooks, module._load_state_dict_pre_hooks, module._load_state_dict_post_hooks):
        for key in [k for k, h in hooks.items() if _is_ours(h)]:
            del hooks[key]
