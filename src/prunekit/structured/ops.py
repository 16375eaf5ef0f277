"""What the channel trace knows about torch functions, by the function object: :data:`OPS` maps each
object a ``TorchFunctionMode`` receives (``torch.cat``, ``torch.Tensor.view``, ``torch.Tensor.__radd__``,
the getter of ``Tensor.T``...) to an :class:`Op`, the family of rule that follows it (keep, combine,
move or reduce channels, or a rule of its own) and the name it is known by. Also small helpers on
label tensors shared by the trace and its rules.

The tables name torch's API. :func:`functions` finds the objects that carry a name, once, at import:
every callable of ``torch``, ``torch.nn.functional``, ``torch._C._nn``, ``torch._C._VariableFunctions``,
``torch.nn.init`` and ``torch.Tensor`` (and the getter of each ``Tensor`` property) is indexed by its
own ``__name__``, and a name reaches its spellings with leading or trailing underscores (``relu_``,
``__getitem__``, ``_softmax``) and, for arithmetic, the reflected and in-place operators
(``__radd__``, ``__iadd__``). A function that is in none of the tables is one the trace cannot
follow: what it touches is pinned.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["FIXED", "FREE", "IDENTITY", "ELEMENTWISE", "INDEX", "SPLITTING", "REDUCE", "ALONG_DIM", "SPATIAL",
           "IGNORE", "RULED", "ARITHMETIC", "Op", "OPS", "functions", "describe", "nameless", "compact", "varying_dims",
           "split_dims"]

FIXED = 0  # the slot every pinned slot joins
FREE = -1  # element with no channel identity (padding)

IDENTITY = {
    "to", "float", "double", "half", "bfloat16", "type", "type_as", "detach", "clone", "contiguous", "cpu", "cuda",
    "requires_grad", "data", "real", "relu", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid",
    "hardtanh", "leaky_relu", "elu", "selu", "celu", "mish", "softplus", "softsign", "exp", "log", "log1p", "sqrt",
    "rsqrt", "erf", "sin", "cos", "reciprocal", "square", "clamp", "clip", "clamp_min", "clamp_max", "neg", "abs",
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "sign", "floor", "ceil",
    "round", "trunc", "logsigmoid", "nan_to_num", "zeros_like", "ones_like", "empty_like", "full_like", "rand_like",
    "randn_like", "fill", "zero", "tril", "triu", "positive", "exp2", "expm1", "sigmoid_", "threshold", "logit",
    "pow", "requires_grad_", "pin_memory", "bernoulli", "normal", "uniform", "silu_", "gelu_", "erfinv", "sinh", "cosh",
    "atan", "tan", "asin", "acos", "frac", "digamma", "lgamma", "rad2deg", "deg2rad",
}
ELEMENTWISE = {
    "add", "sub", "mul", "div", "true_divide", "floor_divide", "truediv", "floordiv", "rsub", "rmul", "rdiv",
    "rtruediv", "radd", "maximum", "minimum", "where", "masked_fill", "lerp", "addcmul", "addcdiv", "eq", "ne", "lt",
    "gt", "le", "ge", "logical_and", "logical_or", "logical_xor", "logical_not", "and", "or", "xor", "iand", "ior",
    "copy", "fmod", "remainder", "mod", "atan2", "hypot", "copysign", "rpow", "sub_", "prelu_elementwise", "max_elem",
    "min_elem", "fmax", "fmin", "isclose", "bitwise_and", "bitwise_or", "bitwise_not", "invert", "matmul_elem",
}
INDEX = {
    "view", "reshape", "permute", "transpose", "t", "T", "mT", "H", "mH", "flatten", "unflatten", "squeeze", "unsqueeze",
    "expand", "expand_as", "repeat", "repeat_interleave", "tile", "cat", "concat", "concatenate", "stack", "hstack",
    "vstack", "split", "split_with_sizes", "chunk", "tensor_split", "unbind", "narrow", "select", "getitem",
    "index_select", "gather", "take_along_dim", "roll", "flip", "movedim", "moveaxis", "swapaxes", "swapdims",
    "channel_shuffle", "native_channel_shuffle", "pixel_shuffle", "pixel_unshuffle", "view_as", "reshape_as",
    "unfold", "as_strided", "diagonal", "broadcast_to", "atleast_1d", "atleast_2d", "atleast_3d", "flatten_",
}
SPLITTING = {"view", "reshape", "unflatten", "chunk", "split", "tensor_split", "split_with_sizes"}
REDUCE = {"mean", "sum", "amax", "amin", "max", "min", "prod", "std", "var", "norm", "logsumexp", "argmax", "argmin",
           "all", "any", "nansum", "nanmean", "count_nonzero", "std_mean", "var_mean", "median"}
ALONG_DIM = {"softmax", "log_softmax", "softmin", "cumsum", "cumprod", "logcumsumexp", "normalize", "cummax",
              "cummin", "sort", "argsort"}
SPATIAL = {"max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
            "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
            "adaptive_max_pool3d", "lp_pool1d", "lp_pool2d", "interpolate", "upsample", "upsample_nearest",
            "upsample_bilinear", "max_pool2d_with_indices", "max_pool1d_with_indices", "fractional_max_pool2d",
            "adaptive_max_pool2d_with_indices", "grid_sample"}
IGNORE = {"size", "dim", "numel", "shape", "dtype", "device", "is_floating_point", "item", "tolist", "len",
           "bool", "is_contiguous", "stride", "data_ptr", "element_size", "nelement", "ndimension", "storage_offset",
           "is_complex", "requires_grad", "get_device", "__get__", "float_power", "backward", "register_hook",
           "retain_grad", "setitem_done", "numpy", "int", "index", "is_nonzero", "ndim", "grad_fn", "is_leaf",
           "names", "layout", "is_sparse", "is_cuda", "is_meta", "untyped_storage", "equal", "allclose", "hash",
           "is_nested", "is_inference", "is_quantized", "is_mkldnn", "has_names", "isfinite_all", "output_nr",
           "is_set_to", "is_same_size", "is_signed", "nbytes", "itemsize"}



RULED = {  # names with a rule of their own (the labeller's rule_* methods, see trace.RULES)
    "getitem", "setitem", "pad", "matmul", "mm", "bmm", "addmm", "linear", "conv1d", "conv2d", "conv3d",
    "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "batch_norm", "instance_norm", "layer_norm",
    "rms_norm", "group_norm", "prelu", "embedding", "scaled_dot_product_attention", "multi_head_attention_forward",
}
ARITHMETIC = {"add", "sub", "mul", "truediv", "floordiv", "div", "pow", "and", "or", "xor", "matmul", "mod", "lshift",
              "rshift"}  # names whose reflected (``__radd__``) and in-place (``__iadd__``) operators are the same op


class Op(NamedTuple):
    """How the trace follows one function: ``family`` is ``"ignore"``, ``"rule"`` (``name`` picks the
    rule), ``"identity"``, ``"elementwise"``, ``"index"``, ``"reduce"``, ``"along_dim"`` or ``"spatial"``."""

    name: str
    family: str


def _index() -> dict[str, list]:
    """Every callable of the namespaces (and each ``Tensor`` property's getter) by its ``__name__``."""
    out: dict[str, list] = {}
    found = [obj for ns in (torch, F, torch._C._nn, torch.nn.init) for obj in list(vars(ns).values())]
    found += [getattr(ns, a) for ns in (torch._C._VariableFunctions, torch.Tensor) for a in dir(ns)]
    seen = set()
    for obj in found:
        name = getattr(obj, "__name__", None)
        if not callable(obj):
            if not (hasattr(obj, "__get__") and isinstance(name, str)):  # getset descriptors: T, mT, data, shape
                continue
            obj = obj.__get__  # what the mode receives for a property
        if not isinstance(name, str):
            continue
        try:
            if obj in seen:
                continue
            seen.add(obj)
        except TypeError:  # unhashable: never a key the mode could look up
            continue
        out.setdefault(name, []).append(obj)
    return out


_BY_NAME = _index()


def functions(name: str, reflected: bool = False) -> list:
    """The function objects known by ``name``: ``name`` with up to two leading and trailing underscores
    (``relu_``, ``_softmax``, ``__getitem__``), and with ``reflected`` the reflected and in-place
    operators of an arithmetic name (``__radd__``, ``__iadd__``)."""
    bases = [name] + ([p + name for p in ("i", "r")] if reflected and name in ARITHMETIC else [])
    out = []
    for base in bases:
        for lead in ("", "_", "__"):
            for tail in ("", "_", "__"):
                out.extend(_BY_NAME.get(lead + base + tail, ()))
    return out


def _table() -> dict[Callable, Op]:
    ops: dict[Callable, Op] = {}
    # the first family that names a function wins, in this order
    for family, names in (("ignore", IGNORE), ("rule", RULED), ("identity", IDENTITY), ("elementwise", ELEMENTWISE),
                          ("index", INDEX), ("reduce", REDUCE), ("along_dim", ALONG_DIM), ("spatial", SPATIAL)):
        for direct in (True, False):  # a function's own name before a reflected one (__rsub__: "rsub", not "sub")
            for name in sorted(names):
                for f in (functions(name) if direct else functions(name, reflected=True)):
                    ops.setdefault(f, Op(name, family))
    return ops


OPS: dict[Callable, Op] = _table()


def describe(func: Callable) -> str:
    """A function's name for messages (``"fft_fft"``, ``"__iter__"``; a property getter: the property)."""
    owner = getattr(func, "__self__", None)
    if getattr(func, "__name__", "") == "__get__" and owner is not None:
        return getattr(owner, "__name__", "") or type(owner).__name__
    return getattr(func, "__name__", None) or repr(func)


def nameless(func: Callable) -> bool:
    """Functions the mode sees that carry no name: a Python property's getter (``__cuda_array_interface__``),
    a ``functools.partial``. They describe a tensor; the trace lets them pass."""
    owner = getattr(func, "__self__", None)
    if getattr(func, "__name__", "") == "__get__" and isinstance(owner, property):
        return True
    return not getattr(func, "__name__", "")


def compact(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the dimensions along which both label tensors are constant (spatial and token dims)."""
    for d in range(a.dim()):
        if a.shape[d] > 1:
            a0, b0 = a.narrow(d, 0, 1), b.narrow(d, 0, 1)
            if bool((a == a0).all()) and bool((b == b0).all()):
                a, b = a0, b0
    return a, b


def varying_dims(lab: torch.Tensor) -> list[int]:
    """Dimensions along which the (non-FREE) labels change."""
    out = []
    if lab.dim() == 0:
        return out
    big = torch.iinfo(torch.long).max
    hi_src = lab
    lo_src = lab.masked_fill(lab == FREE, big)
    for d in range(lab.dim()):
        if lab.shape[d] < 2:
            continue
        hi, lo = hi_src.amax(d), lo_src.amin(d)
        valid = hi != FREE
        if bool((hi[valid] != lo[valid]).any()):
            out.append(d)
    return out


def split_dims(before: tuple, after: tuple) -> list[tuple[int, int]]:
    """Input dims that a reshape cuts into several output dims: (input dim, size of the first piece)."""
    out, i, j = [], 0, 0
    while i < len(before) and j < len(after):
        if before[i] == after[j]:
            i, j = i + 1, j + 1
            continue
        if before[i] == 1:
            i += 1
            continue
        if after[j] == 1:
            j += 1
            continue
        start, prod = j, 1
        while j < len(after) and prod < before[i]:
            prod *= after[j]
            j += 1
        if prod == before[i] and j - start > 1:
            out.append((i, after[start]))
            i += 1
        else:  # dims merge (flatten) or do not line up: no cut to record
            return out
    return out
