"""What the channel trace knows about torch functions: which ones keep, combine, move or reduce
channels (by name), and small helpers on label tensors shared by the trace and its rules.
"""

from __future__ import annotations

import torch

__all__ = ["FIXED", "FREE", "IDENTITY", "ELEMENTWISE", "INDEX", "SPLITTING", "REDUCE", "ALONG_DIM", "SPATIAL",
           "IGNORE", "op_name", "compact", "varying_dims", "split_dims"]

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


def op_name(func) -> str:
    name = getattr(func, "__name__", "") or ""
    if name == "__get__":
        owner = getattr(func, "__self__", None)
        name = getattr(owner, "__name__", "") or ""
    name = name.strip("_")
    if name.startswith(("i", "r")) and name[1:] in {"add", "sub", "mul", "truediv", "floordiv", "div", "pow", "and",
                                                   "or", "xor", "matmul", "mod", "lshift", "rshift"}:
        name = name[1:]
    if name.endswith("_") and name not in IGNORE:
        name = name.rstrip("_")
    return name


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
