"""Layers that run on prunekit's CPU kernels: CSR Linear, sparse int8 Linear, CSR Conv2d.

Each one copies what it needs from the (finalized) dense layer at construction, holds it in buffers
(so ``state_dict``, ``deepcopy`` and ``.to()`` behave), and is inference-only. ``sparse_runtime``
builds them and keeps whichever measures faster than the dense layer; they can also be built by hand
with ``prunekit.deploy.kernels.load()``.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from prunekit.deploy.kernels import cpu_has_avx512, load

__all__ = ["SparseLinear", "SparseLinearInt8", "SparseConv2d", "dense_equivalent"]


def _csr(w: torch.Tensor, module: nn.Module, chunks_per_thread: int) -> None:
    """Register ``w`` (out, in) as CSR buffers on ``module``: indptr, indices (int32), values, chunks."""
    nz = w != 0
    indptr = torch.cat([torch.zeros(1, dtype=torch.int64), nz.sum(1).cumsum(0)])
    module.register_buffer("indptr", indptr)
    module.register_buffer("indices", nz.nonzero()[:, 1].to(torch.int32).contiguous())
    module.register_buffer("values", w[nz].contiguous())
    module.register_buffer("chunks", _chunks(indptr, max(1, torch.get_num_threads() * chunks_per_thread)))


class _KernelLayer(nn.Module):
    """Base of the kernel-backed layers: ``self._k`` is the compiled extension and ``self._ops`` its
    ``torch.ops`` namespace (forwards call the operators, which torch.compile and torch.export can
    trace). Python cannot copy or pickle either, so copies carry the build name (``"avx512"`` /
    ``"portable"``) and load it again."""

    def _adopt(self, layer: nn.Module, kernels: Any) -> torch.Tensor:
        """Check ``layer``'s weight (float32 on the CPU), keep its bias as a buffer and the kernels; return the weight."""
        w = layer.weight.detach()
        if w.dtype != torch.float32 or w.device.type != "cpu":
            raise ValueError(f"{type(self).__name__} needs a float32 CPU weight, got {w.dtype} on {w.device}")
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().float().contiguous())
        self._k, self._ops = kernels, kernels.ops
        return w

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_k"] = self._k.isa()
        state.pop("_ops", None)
        return state

    def __setstate__(self, state):
        isa = state["_k"]
        super().__setstate__(state)
        if isa == "avx512" and type(self) is SparseLinear and not cpu_has_avx512():
            warnings.warn("SparseLinear was made with the AVX-512 kernels, which this CPU cannot run; it uses the "
                          "portable build (same weights and results)", stacklevel=2)
            isa = "portable"
        self._k = load(isa)  # RuntimeError for int8 and conv layers from an AVX-512 CPU: they have no portable loop
        if self._k is None:
            raise RuntimeError(f"{type(self).__name__} needs prunekit's '{isa}' kernels, which cannot be built here")
        self._ops = self._k.ops


def _inference_only(name: str, x: torch.Tensor) -> None:
    if torch.is_grad_enabled() and x.requires_grad:
        raise RuntimeError(f"{name} is inference-only; run under torch.no_grad() or use the dense model to train")
    if torch.jit.is_tracing():  # the C++ call is invisible to the tracer, which would record a constant
        raise RuntimeError(f"{name} runs a C++ kernel that torch.jit.trace cannot record (the trace would return "
                           "the same output for every input); trace or export the pruned model itself, or use "
                           "prunekit.deploy.export_onnx, which exports what the float kernels compute")


def _features(name: str, got: int, want: int, what: str = "features") -> None:
    """The kernels index the input by the weight's columns, so a narrower input must never reach them."""
    if got != want:
        raise ValueError(f"{name} takes inputs x with {want} {what} (as the layer it replaced), got {got}")


def _dense_rows(indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, cols: int) -> torch.Tensor:
    """The dense ``(rows, cols)`` matrix of CSR arrays."""
    rows = indptr.numel() - 1
    out = torch.zeros(rows, cols, dtype=values.dtype)
    row_of = torch.repeat_interleave(torch.arange(rows), indptr.diff())
    out[row_of, indices.long()] = values
    return out


def _chunks(indptr: torch.Tensor, parts: int) -> torch.Tensor:
    """Row boundaries splitting the nonzeros into ``parts`` chunks of about equal size."""
    targets = torch.linspace(0, float(indptr[-1]), parts + 1)
    cuts = torch.searchsorted(indptr.to(torch.float64), targets.to(torch.float64)).clamp_(0, indptr.numel() - 1)
    cuts[0], cuts[-1] = 0, indptr.numel() - 1
    return torch.unique(cuts).to(torch.int64)


class SparseLinear(_KernelLayer):
    """A Linear layer stored as CSR and run by prunekit's CPU kernels (inference only).

    Args:
        linear: the (finalized) ``nn.Linear`` to convert; float32 on the CPU.
        kernels: the compiled kernel module (``prunekit.deploy.kernels.load()``).
        chunks_per_thread: work units per thread for load balance.
    """

    def __init__(self, linear: nn.Linear, kernels: Any, chunks_per_thread: int = 8):
        super().__init__()
        w = self._adopt(linear, kernels)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        _csr(w, self, chunks_per_thread)

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    def to_dense(self) -> nn.Linear:
        """The ``nn.Linear`` this layer computes (zeros included), e.g. for ONNX export or checks."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(_dense_rows(self.indptr, self.indices, self.values, self.in_features))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _inference_only("SparseLinear", x)
        _features("SparseLinear", x.shape[-1] if x.dim() else 0, self.in_features)
        b = self._buffers  # a dict lookup: each module attribute lookup of a buffer costs ~0.7 us
        return self._ops.linear(b["chunks"], b["indptr"], b["indices"], b["values"], x, b["bias"])

    def extra_repr(self) -> str:
        total = self.in_features * self.out_features
        return f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.nnz} ({1 - self.nnz / total:.1%} sparse)"


class SparseLinearInt8(_KernelLayer):
    """A sparse Linear layer in int8, run by prunekit's AVX-512 VNNI kernel (inference only).

    Weights are quantized symmetrically with one scale per output row and kept in groups of 4
    consecutive input columns (a ``block:1x4`` pattern fills every kept group; unstructured rows keep
    each group holding a nonzero, zeros inside). Activations are quantized per token at run time.
    Lossy like any int8 path (about 1% relative error per layer); zeros stay zero.

    Args:
        linear: the (finalized) ``nn.Linear`` to convert; float32 on the CPU.
        kernels: the compiled kernel module; ``kernels.has_vnni()`` must be true.
        chunks_per_thread: work units per thread for load balance.
    """

    def __init__(self, linear: nn.Linear, kernels: Any, chunks_per_thread: int = 8):
        super().__init__()
        if not kernels.has_vnni():
            raise RuntimeError("SparseLinearInt8 needs a CPU with AVX-512 VNNI and the AVX-512 kernel build")
        w = self._adopt(linear, kernels)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        groups = (self.in_features + 3) // 4
        scale = w.abs().amax(1) / 127
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.zeros(self.out_features, groups * 4, dtype=torch.int8)
        q[:, : self.in_features] = (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8)
        q = q.reshape(self.out_features, groups, 4)
        keep = (q != 0).any(-1)
        self.register_buffer("indptr", torch.cat([torch.zeros(1, dtype=torch.int64), keep.sum(1).cumsum(0)]))
        self.register_buffer("groups", keep.nonzero()[:, 1].to(torch.int32).contiguous())
        self.register_buffer("packed", q[keep].contiguous().view(torch.int32).reshape(-1))  # 4 int8 per int32
        self.register_buffer("row_sums", q.sum((1, 2), dtype=torch.int32))
        self.register_buffer("scale", scale.float().contiguous())
        self.register_buffer("chunks", _chunks(self.indptr, max(1, torch.get_num_threads() * chunks_per_thread)))

    def int8_weight(self) -> torch.Tensor:
        """The quantized weight as a dense int8 ``(out, in)`` tensor (for checks and counting)."""
        q = torch.zeros(self.out_features, (self.in_features + 3) // 4, 4, dtype=torch.int8)
        rows = torch.repeat_interleave(torch.arange(self.out_features), self.indptr.diff())
        q[rows, self.groups.long()] = self.packed.view(torch.int8).reshape(-1, 4)
        return q.reshape(self.out_features, -1)[:, : self.in_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _inference_only("SparseLinearInt8", x)
        _features("SparseLinearInt8", x.shape[-1] if x.dim() else 0, self.in_features)
        b = self._buffers
        return self._ops.linear_int8(b["chunks"], b["indptr"], b["groups"], b["packed"], b["row_sums"], b["scale"], x,
                                   b["bias"])

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"groups_of_4={int(self.groups.numel())}, int8 (VNNI)")


def explicit_padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """``conv``'s padding as (left, right, top, bottom), "valid" and "same" included."""
    if isinstance(conv.padding, str):  # "valid" or "same" (stride 1)
        total = [0, 0] if conv.padding == "valid" else [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        return (total[1] // 2, total[1] - total[1] // 2, total[0] // 2, total[0] - total[0] // 2)
    ph, pw = conv.padding
    return (pw, pw, ph, ph)


class SparseConv2d(_KernelLayer):
    """A Conv2d stored as CSR over ``(out, in * kh * kw)`` and run by prunekit's kernels (inference only).

    The kernel unfolds the input one tile of output pixels at a time (implicit im2col; 32 pixels in
    the AVX-512 build, 16 in the portable one) and multiplies it by the CSR rows, so the output lands
    in NCHW without a transpose. ``groups`` must be 1 and ``padding_mode`` "zeros".

    Args:
        conv: the (finalized) ``nn.Conv2d`` to convert; float32 on the CPU.
        kernels: the compiled kernel module.
        chunks_per_thread: work units per thread for load balance.
    """

    def __init__(self, conv: nn.Conv2d, kernels: Any, chunks_per_thread: int = 8):
        super().__init__()
        w = self._adopt(conv, kernels)
        if conv.groups != 1 or conv.padding_mode != "zeros":
            raise ValueError(f"SparseConv2d takes groups=1 and padding_mode='zeros', got groups={conv.groups}, "
                             f"padding_mode={conv.padding_mode!r}")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.dilation = tuple(conv.kernel_size), tuple(conv.stride), tuple(conv.dilation)
        self.pad = explicit_padding(conv)
        _csr(w.reshape(w.shape[0], -1), self, chunks_per_thread)

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    def to_dense(self) -> nn.Conv2d:
        """The ``nn.Conv2d`` this layer computes (zeros included, padding made explicit)."""
        left, right, top, bottom = self.pad
        symmetric = left == right and top == bottom
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, stride=self.stride,
                         padding=(top, left) if symmetric else 0, dilation=self.dilation, bias=self.bias is not None)
        kh, kw = self.kernel_size
        with torch.no_grad():
            flat = _dense_rows(self.indptr, self.indices, self.values, self.in_channels * kh * kw)
            conv.weight.copy_(flat.reshape(conv.weight.shape))
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        if symmetric:
            return conv.eval()
        return nn.Sequential(nn.ZeroPad2d(self.pad), conv).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _inference_only("SparseConv2d", x)
        b = self._buffers
        unbatched = x.dim() == 3
        if x.dim() not in (3, 4):
            raise ValueError(f"SparseConv2d takes (N, C, H, W) or (C, H, W) inputs, got shape {tuple(x.shape)}")
        _features("SparseConv2d", x.shape[-3], self.in_channels, "channels")
        if unbatched:
            x = x.unsqueeze(0)
        left, right, top, bottom = self.pad
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        h, w = x.shape[-2] + top + bottom, x.shape[-1] + left + right
        ho, wo = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
        y = self._ops.conv2d(b["indptr"], b["indices"], b["values"], x.float().contiguous(), b["bias"],
                              [kh, kw, sh, sw, dh, dw, top, left, ho, wo])
        return y[0] if unbatched else y

    def extra_repr(self) -> str:
        total = self.out_channels * self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"nnz={self.nnz} ({1 - self.nnz / total:.1%} sparse)")


def dense_equivalent(model: nn.Module, verb: str = "save") -> nn.Module:
    """``model`` with its float kernel layers turned back into the dense layers they compute (a copy
    when it has any; ``model`` itself otherwise). Int8 kernel layers, which only prunekit's and
    PyTorch's runtimes compute, are refused by name.

    Example:
        >>> plain = dense_equivalent(prunekit.deploy.sparse_runtime(pruned, x))   # nn.Linear again
    """
    import copy

    runtime = [(n, m) for n, m in model.named_modules() if isinstance(m, (SparseLinear, SparseConv2d))]
    int8 = [n for n, m in model.named_modules()
            if isinstance(m, SparseLinearInt8) or type(m).__module__.startswith("torch.ao.nn.quantized")]
    if int8:
        how = ("export_onnx(pruned, x, path, quantize='int8')" if verb == "export" else
               "prunekit.save(pruned, path, quantize='int8')")
        raise ValueError(f"layers {int8[:4]} run int8 kernels (sparse_runtime(int8=True)), which cannot be "
                         f"{'exported' if verb == 'export' else 'saved'} as they run; {verb} the pruned float model "
                         f"instead: {how}")
    if not runtime:
        return model
    model = copy.deepcopy(model)
    for name, m in runtime:
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, m.to_dense())
    return model
