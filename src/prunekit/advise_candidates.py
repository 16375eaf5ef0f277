"""What :func:`prunekit.advise` tries: the candidates (the practitioner's usual options) and how each
is built on a copy of the user's model."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

__all__ = ["Candidate", "default_candidates"]


@dataclass
class Candidate:
    """One way to make the model smaller/faster: ``build(model, example_inputs, threads)`` returns
    ``(runnable, model_to_save, save_kind)`` where save_kind is ``"masks"`` or ``"structured"`` (the
    file as prunekit.save writes it) or ``"int8"`` (int8 + lzma), optionally followed by a note on what was done differently (shown with the row)."""

    name: str
    method: str
    sparsity: float
    build: Callable[..., tuple[Any, nn.Module, str]]
    scenario: str = ""


def _linear_or_conv(m: nn.Module, fqn: str) -> bool:
    return isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))


def _fits(pattern: str):
    """Layers the pattern can tile: N:M and blocks need the input dimension to divide evenly."""
    m = int(pattern.split(":")[1]) if pattern.count(":") == 1 and pattern[0].isdigit() else 1
    cols = int(pattern.split("x")[1]) if pattern.startswith("block:") else 1
    rows = int(pattern.split(":")[1].split("x")[0]) if pattern.startswith("block:") else 1
    return lambda mod, fqn: _linear_or_conv(mod, fqn) and mod.weight.shape[1] % max(m, cols) == 0 \
        and mod.weight.shape[0] % rows == 0


def _masked(sparsity: float, pattern: str, int8: bool = False):
    def build(model, example, threads):
        import prunekit as pk
        from prunekit.deploy import to_sparse_runtime
        from prunekit.pruning import too_thin

        scope = "global" if pattern == "unstructured" else "layer"
        note = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # what the warnings say is acted on below
            if scope == "layer":
                pk.prune(model, sparsity, pattern=pattern, scope=scope, include=_fits(pattern))
            else:  # global ranking can empty a layer whose weights are all small (a head): try it on a copy
                trial = copy.deepcopy(model)
                pk.prune(trial, sparsity, pattern=pattern, scope=scope, include=_fits(pattern))
                found = pk.masks(trial)
                starved = [name.rsplit(".", 1)[0] for name, keep in found.items() if too_thin(keep, sparsity)]
                if not starved:
                    pk.apply_masks(model, found, pattern=pattern)  # the trial's masks, not a second ranking
                else:
                    amount = {"*": sparsity, **{name: sparsity for name in starved}}
                    note = (f"{', '.join(starved[:3])} pruned to {sparsity:.0%} on {'its' if len(starved) == 1 else 'their'} "
                            "own: global ranking left under a tenth of the asked density there")
                    pk.prune(model, amount, pattern=pattern, scope=scope, include=_fits(pattern))
        pk.finalize(model)
        fast = to_sparse_runtime(model, example, threads=threads, int8=int8).model
        return fast, model, "int8" if int8 else "masks", note

    return build


def _structured(sparsity: float, int8: bool = False):
    def build(model, example, threads):
        import prunekit as pk

        pk.structured.prune_channels(model, example, sparsity=sparsity, round_to=8, progress=False)
        runnable = _int8(model) if int8 else model
        return runnable, model, "int8" if int8 else "structured"

    return build


def _int8(model: nn.Module) -> nn.Module:
    from prunekit.deploy.runtime import dynamic_int8

    quantized = dynamic_int8(model)
    if quantized is None:
        raise RuntimeError("this torch build has no dynamic int8 Linear (torch.ao.quantization.quantize_dynamic)")
    return quantized


def _int8_only(model, example, threads):
    return _int8(model), model, "int8"


def default_candidates() -> list[Candidate]:
    """The matrix's options, roughly from the most to the least often useful."""
    return [
        Candidate("structured 30%", "prune_channels(sparsity=0.3)", 0.3, _structured(0.3), "mobile / any CPU, no sparse kernels"),
        Candidate("unstructured 90% + sparse runtime", "prune 90% + to_sparse_runtime", 0.9, _masked(0.9, "unstructured"),
                  "CPU with prunekit's runtime"),
        Candidate("structured 50%", "prune_channels(sparsity=0.5)", 0.5, _structured(0.5), "mobile / any CPU, no sparse kernels"),
        Candidate("int8 dynamic (dense)", "quantize_dynamic(Linear)", 0.0, _int8_only, "CPU, quantization only"),
        Candidate("unstructured 70% + sparse runtime", "prune 70% + to_sparse_runtime", 0.7, _masked(0.7, "unstructured"),
                  "CPU with prunekit's runtime"),
        Candidate("2:4", "prune 2:4 (+ to_sparse_runtime)", 0.5, _masked(0.5, "2:4"), "GPU with 2:4 tensor cores (A100/H100)"),
        Candidate("unstructured 90% + int8", "prune 90% + to_sparse_runtime(int8=True)", 0.9,
                  _masked(0.9, "unstructured", int8=True), "smallest file / microcontroller"),
        Candidate("1x4 blocks 90% + sparse runtime", "prune block:1x4 90% + to_sparse_runtime", 0.9,
                  _masked(0.9, "block:1x4"), "CPU with prunekit's runtime"),
        Candidate("1x4 blocks 90% + int8", "prune block:1x4 90% + to_sparse_runtime(int8=True)", 0.9,
                  _masked(0.9, "block:1x4", int8=True), "CPU with AVX-512 VNNI (prunekit's sparse int8 kernel)"),
        Candidate("unstructured 95% + sparse runtime", "prune 95% + to_sparse_runtime", 0.95, _masked(0.95, "unstructured"),
                  "CPU with prunekit's runtime"),
        Candidate("structured 30% + int8", "prune_channels(0.3) + quantize_dynamic", 0.3, _structured(0.3, int8=True),
                  "CPU, structured and quantized"),
    ]
