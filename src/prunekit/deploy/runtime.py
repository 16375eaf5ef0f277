"""Sparse CPU runtime: re-bind sparse Linear and Conv2d layers to CSR kernels where they measure faster.

``to_sparse_runtime(model, example_inputs)`` copies the model, finds Linear and Conv2d layers whose weights are mostly
zeros, builds a :class:`SparseLinear` / :class:`SparseConv2d` for each (CSR with int32 column
indices; see ``prunekit.deploy.layers``), times dense vs sparse for every layer at the shape it sees in the model's forward on
``example_inputs``, and keeps whichever is faster (DeepSparse's "fraction of supported ops", made
explicit: the returned :class:`RuntimeReport` says which layers run sparse and why the others do
not). The kernels (``kernels/sparse_linear.cpp``) are built on first use; where they cannot be built,
the model stays dense with a warning.

Inference only (no autograd), float32 on the CPU. For CUDA GPUs with compute capability >= 8.0,
2:4-masked weights go through ``torch.sparse.to_sparse_semi_structured`` instead (see
:func:`semi_structured`).
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from prunekit._checks import fraction, integer
from prunekit._progress import progress as progress_bar
from prunekit.deploy.kernels import load
from prunekit.deploy.layers import SparseConv2d, SparseLinear, SparseLinearInt8
from prunekit.inputs import call, modes
from prunekit.inputs import threads as threads_in_use
from prunekit.masks import finalize, masks

__all__ = ["to_sparse_runtime", "Runtime", "RuntimeReport", "semi_structured", "dynamic_int8", "sparse_runtime"]


@dataclass
class RuntimeReport:
    """Per Linear/Conv2d layer: ``name``, ``sparsity``, ``tokens`` it saw, ``dense_us`` / ``sparse_us`` /
    ``int8_us`` / ``sparse_int8_us`` (median per call), ``choice`` (``"dense"``, ``"sparse"``,
    ``"int8"`` or ``"sparse_int8"``), ``sparse`` (runs a sparse kernel) and ``reason``.
    ``fraction_sparse``: share of these layers' weights that now run sparse."""

    rows: list[dict] = field(default_factory=list)

    @property
    def fraction_sparse(self) -> float:
        total = sum(r["weights"] for r in self.rows)
        return sum(r["weights"] for r in self.rows if r["sparse"]) / total if total else 0.0

    def __str__(self) -> str:
        lines = [f"{'layer':<48} {'sparsity':>8} {'tokens':>6} {'dense us':>9} {'sparse us':>9} {'int8 us':>8} "
                 f"{'sp.int8 us':>10}  choice"]
        for r in self.rows:
            d, s, q, sq = ("-" if r.get(k) is None else f"{r[k]:.1f}"
                           for k in ("dense_us", "sparse_us", "int8_us", "sparse_int8_us"))
            lines.append(f"{r['name']:<48} {r['sparsity']:>8.1%} {r['tokens']:>6} {d:>9} {s:>9} {q:>8} {sq:>10}  "
                         f"{r['choice']} ({r['reason']})")
        lines.append(f"{self.fraction_sparse:.1%} of Linear/Conv2d weights run sparse")
        return "\n".join(lines)


def _time(fn, x, reps: int = 5) -> float:
    """Seconds per call over ``reps`` back-to-back calls."""
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(x)
    return (time.perf_counter() - t0) / reps


class Runtime(NamedTuple):
    """What :func:`to_sparse_runtime` returns: the new ``model`` and its :class:`RuntimeReport`."""

    model: nn.Module
    report: RuntimeReport


def to_sparse_runtime(
    model: nn.Module,
    example_inputs: Any = None,
    min_sparsity: float = 0.5,
    repeats: int = 7,
    threads: int | None = None,
    int8: bool = False,
    progress: bool = False,
) -> Runtime:
    """A copy of ``model`` with sparse Linear/Conv2d layers re-bound to CSR kernels where they measure faster.

    ``model`` itself is not changed (``to_*`` functions return a new model; prunekit's verbs such as
    :func:`prunekit.prune` change the model they are given).

    Args:
        model: a pruned model (live masks are baked into the copy).
        example_inputs: one input (see :mod:`prunekit.inputs`); each layer is timed at the shape it sees
            there. Without it every candidate runs sparse, unmeasured.
        min_sparsity: layers with fewer zeros stay dense without being timed.
        repeats: timed blocks per layer (dense and sparse interleaved, median).
        threads: ``torch.set_num_threads`` during the measurement (use what you will deploy with).
        int8: also try PyTorch's dynamic int8 Linear (fbgemm) for every float32 Linear and, for sparse
            layers on CPUs with AVX-512 VNNI, prunekit's sparse int8 kernel (:class:`SparseLinearInt8`;
            fastest on ``block:1x4`` weights), and keep whichever measures fastest. Lossy (about 1-2%
            relative error per layer); zeros stay zero.
        progress: show a progress bar over the layers being timed.

    Returns:
        :class:`Runtime` ``(model, report)``: the new model and a :class:`RuntimeReport` saying, per
        layer, what runs sparse and why.

    Example:
        >>> fast, report = prunekit.deploy.to_sparse_runtime(pruned, tokens, threads=2)
        >>> print(report)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    model = copy.deepcopy(model)
    report = _rebind(model, example_inputs, min_sparsity, repeats, threads, int8, progress, stacklevel=3)
    return Runtime(model, report)


def sparse_runtime(model: nn.Module, example_inputs: Any = None, min_sparsity: float = 0.5, rounds: int = 7,
                   threads: int | None = None, inplace: bool = False, int8: bool = False) -> nn.Module:
    """Deprecated (goes in prunekit 0.3): use :func:`to_sparse_runtime`, which returns ``(model, report)``.

    Returns the model (a copy unless ``inplace``) with the report as ``model.runtime_report``.
    """
    warnings.warn("sparse_runtime() is deprecated and goes in prunekit 0.3; use "
                  "fast, report = prunekit.deploy.to_sparse_runtime(model, example_inputs, repeats=..., ...)",
                  DeprecationWarning, stacklevel=2)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    model.runtime_report = _rebind(model, example_inputs, min_sparsity, rounds, threads, int8, False, stacklevel=3)
    return model


def _rebind(model, example_inputs, min_sparsity, repeats, threads, int8, progress, stacklevel) -> RuntimeReport:
    """Swap layers of ``model`` in place (all-or-nothing) and return the report."""
    min_sparsity = fraction(min_sparsity, "min_sparsity")
    integer(repeats, "repeats", 1)
    if threads is not None:
        integer(threads, "threads", 1)
    if masks(model):
        finalize(model)
    report = RuntimeReport()
    layers = [(n, m) for n, m in model.named_modules() if type(m) in (nn.Linear, nn.Conv2d)]
    candidates = []
    for name, m in layers:
        w = m.weight.detach()
        sparsity = 1 - int(torch.count_nonzero(w)) / w.numel()
        row = {"name": name, "sparsity": sparsity, "weights": w.numel(), "tokens": 0, "dense_us": None,
               "sparse_us": None, "int8_us": None, "sparse_int8_us": None, "choice": "dense", "sparse": False,
               "reason": ""}
        report.rows.append(row)
        if w.dtype != torch.float32 or w.device.type != "cpu":
            row["reason"] = f"{w.dtype} on {w.device}: the CPU kernels take float32"
        elif sparsity < min_sparsity and not (int8 and type(m) is nn.Linear):
            row["reason"] = f"below min_sparsity={min_sparsity}"
        elif type(m) is nn.Conv2d and (m.groups != 1 or m.padding_mode != "zeros"):
            row["reason"] = f"groups={m.groups}, padding_mode={m.padding_mode!r}: the conv kernel takes groups=1, zeros"
        else:
            candidates.append((name, m, row))
    if not any(r["sparsity"] >= min_sparsity for _, _, r in candidates) and not int8:
        warnings.warn(f"no Linear or Conv2d layer has >= {min_sparsity:.0%} zeros: the model is returned unchanged",
                      stacklevel=stacklevel)
        return report
    kernels = load()
    shapes = _input_shapes(model, example_inputs, [(n, m) for n, m, _ in candidates]) if example_inputs is not None else {}
    swapped: list[tuple[nn.Module, str, nn.Module]] = []  # undone if a later layer fails
    bar = progress_bar(total=len(candidates), desc="sparse runtime", unit="layer", enabled=progress)
    try:
        with threads_in_use(threads), torch.no_grad():
            for name, m, row in candidates:
                bar.update(1)
                options = {}
                if row["sparsity"] >= min_sparsity:
                    if kernels is None:
                        row["reason"] = "kernels could not be built here"
                    elif type(m) is nn.Conv2d:
                        options["sparse"] = SparseConv2d(m, kernels)
                    else:
                        options["sparse"] = SparseLinear(m, kernels)
                        if int8 and kernels.has_vnni():
                            options["sparse_int8"] = SparseLinearInt8(m, kernels)
                if int8 and type(m) is nn.Linear:
                    quantized = dynamic_int8(m)
                    if quantized is not None:
                        options["int8"] = quantized
                if not options:
                    continue
                if example_inputs is None:
                    choice = "sparse" if "sparse" in options else "int8"
                    row.update(choice=choice, sparse=choice.startswith("sparse"), reason="not measured (no example_inputs)")
                elif name not in shapes:
                    row["reason"] = "not called by forward on example_inputs"
                    continue
                else:
                    x = torch.randn(shapes[name])
                    out = m(x)  # tokens: output positions (rows for Linear, pixels for Conv2d)
                    row["tokens"] = int(out.numel() // (m.out_features if type(m) is nn.Linear else m.out_channels))
                    fns = {"dense": m, **options}
                    for fn in fns.values():  # warm-up
                        fn(x)
                    samples = {k: [] for k in fns}
                    for _ in range(repeats):
                        for k, fn in fns.items():
                            samples[k].append(_time(fn, x))
                    times = {k: statistics.median(v) for k, v in samples.items()}
                    for k, t in times.items():
                        row[f"{k}_us"] = t * 1e6
                    choice = min(times, key=times.get)
                    row.update(choice=choice, sparse=choice.startswith("sparse"))
                    if choice == "dense":
                        row["reason"] = "dense measured fastest"
                        continue
                    row["reason"] = f"{times['dense'] / times[choice]:.2f}x faster than dense"
                parent_name, _, attr = name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                swapped.append((parent, attr, m))
                setattr(parent, attr, options[row["choice"]])
    except BaseException:
        for parent, attr, m in reversed(swapped):
            setattr(parent, attr, m)
        raise
    finally:
        bar.close()
    return report


def dynamic_int8(module: nn.Module) -> nn.Module | None:
    """A copy of ``module`` whose Linear layers (or itself, if it is one) are PyTorch's dynamic int8
    Linear (fbgemm); None where this torch lacks it. ``module`` is not changed.

    Example:
        >>> q = prunekit.deploy.dynamic_int8(model)   # what int8 without prunekit's kernels gives
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.ao.quantization is deprecated, still shipped
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions")  # the same, as a UserWarning
            return torch.ao.quantization.quantize_dynamic(nn.Sequential(module), {nn.Linear}, dtype=torch.qint8)[0]
    except (AttributeError, ImportError, RuntimeError):
        return None


def _input_shapes(model: nn.Module, example_inputs: Any, modules: list[tuple[str, nn.Module]]) -> dict[str, torch.Size]:
    """The input shape each module sees in one forward pass on ``example_inputs``."""
    shapes: dict[str, torch.Size] = {}

    def record(name):
        def hook(module, args):  # returns None: a pre-hook's return value would replace the inputs
            shapes.setdefault(name, args[0].shape)

        return hook

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in modules]
    try:
        with modes(model), torch.no_grad():
            call(model, example_inputs)
    except Exception as e:
        raise ValueError(f"the model does not run on example_inputs: {type(e).__name__}: "
                         f"{str(e).splitlines()[0][:300] if str(e) else ''}") from e
    finally:
        for h in hooks:
            h.remove()
    return shapes


def semi_structured(model: nn.Module) -> nn.Module:
    """Convert 2:4-sparse Linear weights to ``torch.sparse.to_sparse_semi_structured`` (CUDA, sm >= 8.0).

    Raises:
        RuntimeError: no such GPU here (the message says what the path needs).
    """
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 8:
        raise RuntimeError("the 2:4 semi-structured path needs a CUDA GPU with compute capability >= 8.0 "
                           "(Ampere or newer); on the CPU use to_sparse_runtime()")
    from torch.sparse import to_sparse_semi_structured

    if masks(model):
        finalize(model)
    for m in model.modules():
        if type(m) is nn.Linear and m.weight.is_cuda and m.weight.dtype in (torch.float16, torch.bfloat16):
            w = m.weight.detach()
            groups = (w != 0).reshape(w.shape[0], -1, 4).sum(-1)
            if bool((groups <= 2).all()):
                m.weight = nn.Parameter(to_sparse_semi_structured(w), requires_grad=False)
    return model
