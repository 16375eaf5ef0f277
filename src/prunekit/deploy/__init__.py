"""Deployment: compressed files, ONNX export (optionally int8), and the sparse CPU runtime."""

from prunekit.deploy.layers import SparseConv2d, SparseLinear, SparseLinearInt8
from prunekit.deploy.onnx import ExportInfo, export_onnx
from prunekit.deploy.runtime import (
    Runtime,
    RuntimeReport,
    dynamic_int8,
    semi_structured,
    sparse_runtime,
    to_sparse_runtime,
)
from prunekit.deploy.runtime_file import RUNTIME_FORMAT, load_runtime, save_runtime
from prunekit.deploy.storage import FORMAT, SaveInfo, load, save

__all__ = ["save", "load", "SaveInfo", "FORMAT", "export_onnx", "ExportInfo", "to_sparse_runtime", "Runtime", "dynamic_int8", "sparse_runtime", "SparseLinear",
           "SparseLinearInt8", "SparseConv2d", "RuntimeReport", "semi_structured", "save_runtime", "load_runtime", "RUNTIME_FORMAT"]
