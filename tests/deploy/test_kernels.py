"""The kernels' build folder is named by what the build depends on, not by where the sources are."""

from __future__ import annotations

import os
import shutil

from prunekit.deploy import kernels


def test_build_key_follows_contents_not_location(tmp_path):
    here = os.path.dirname(os.path.abspath(kernels.__file__))
    a, b = tmp_path / "checkout-a", tmp_path / "checkout-b"
    for d in (a, b):
        shutil.copytree(here, d, ignore=shutil.ignore_patterns("__pycache__"))
    flags = kernels._flags("avx512")
    assert kernels._build_key(str(a), flags) == kernels._build_key(str(b), flags) == kernels._build_key(here, flags)
    with open(b / "parallel.h", "a") as f:  # a header the build cache of torch does not see
        f.write("\n// changed\n")
    assert kernels._build_key(str(a), flags) != kernels._build_key(str(b), flags)
    assert kernels._build_key(str(a), flags) != kernels._build_key(str(a), kernels._flags("portable"))
