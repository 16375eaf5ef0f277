"""Running a rebuilt model: does it still run on the example inputs, in every mode it ran in before,
with the same output shapes; and if not, in which module it failed, so the groups that module's own
code hard-codes can be kept.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from prunekit.inputs import call
from prunekit.structured.groups import Group
from prunekit.structured.macs import Counter
from prunekit.structured.trace import preserved

__all__ = ["check", "keep_inside"]


class _Where:
    """Remembers the innermost module running when an exception escapes."""

    def __init__(self, model: nn.Module):
        self.stack, self.hooks = [], []
        for name, m in model.named_modules():
            self.hooks.append(m.register_forward_pre_hook(lambda mod, a, n=name: self._push(n)))
            self.hooks.append(m.register_forward_hook(lambda mod, a, o: self._pop()))

    def _push(self, name) -> None:
        self.stack.append(name)

    def _pop(self) -> None:
        if self.stack:
            self.stack.pop()

    def close(self):
        for h in self.hooks:
            h.remove()


def _shapes(out):
    return [tuple(o.shape) for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]


def check(model: nn.Module, example_inputs: Any, expected: dict, counter: Counter | None = None) -> str | None:
    """Run eval (and train, when it ran before) mode; returns "module|error" or None.

    ``expected`` maps each mode (train True/False) to the output shapes it gave before; ``counter``
    adds up the eval-mode MACs on the way. Buffers and modes are restored.
    """
    where = _Where(model)
    try:
        with preserved(model):
            for train, shapes in expected.items():
                model.train(train)
                where.stack.clear()
                try:
                    with torch.no_grad(), (counter if counter is not None and not train else contextlib.nullcontext()):
                        got = _shapes(call(model, example_inputs))
                except Exception as e:
                    name = where.stack[-1] if where.stack else ""
                    return f"{name}|{type(e).__name__}: {e}"
                if got != shapes:
                    return f"|output shapes changed: {shapes} -> {got}"
        return None
    finally:
        where.close()


def keep_inside(model: nn.Module, groups: list[Group], module: str, wide: bool) -> bool:
    """Pin groups inside every module of the failing module's class (``wide``: groups touching them).
    Returns whether any group changed."""
    cls = type(model.get_submodule(module))
    roots = [n for n, m in model.named_modules() if type(m) is cls]
    inside = lambda fqn: any(fqn.startswith(r + ".") or not r for r in roots)  # noqa: E731
    changed = False
    for g in groups:
        if not g.prunable:
            continue
        hit = [inside(f) for f, _ in g.members]
        if (all(hit) and not wide) or (any(hit) and wide):
            g.prunable, g.reason, changed = False, f"{cls.__name__} hard-codes this width", True
    return changed
