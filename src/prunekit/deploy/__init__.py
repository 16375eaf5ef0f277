"""Deployment: compressed files (more to come: sparse CPU runtime, ONNX export, int8)."""

from prunekit.deploy.storage import FORMAT, SaveInfo, load, save

__all__ = ["save", "load", "SaveInfo", "FORMAT"]
