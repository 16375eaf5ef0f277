"""The kernels' build: its key follows what it depends on; the install-time libraries are used when it matches."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

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


HERE = os.path.dirname(os.path.abspath(kernels.__file__))
PREBUILT = os.path.exists(os.path.join(HERE, kernels.prebuilt_name("avx512") + ".key"))
FIRST_FORWARD = """
import sys, torch
from torch import nn
import prunekit as pk
from prunekit.deploy import to_sparse_runtime
model = nn.Sequential(nn.Linear(64, 64))
pk.prune(model, 0.9)
fast, report = to_sparse_runtime(model)
with torch.no_grad():
    assert torch.allclose(fast(torch.ones(3, 64)), model(torch.ones(3, 64)), atol=1e-5)
print(type(fast[0]).__name__, fast[0]._k.__name__)
"""


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env})


@pytest.mark.skipif(not PREBUILT, reason="installed without the ahead-of-time build (PRUNEKIT_NO_PREBUILD, or an isolated build)")
def test_a_fresh_process_runs_the_prebuilt_kernels_without_compiling():
    done = _run(FIRST_FORWARD)
    assert done.returncode == 0, done.stderr[-2000:]
    isa = "avx512" if _cpu_has_avx512() else "portable"
    assert done.stdout.split() == ["SparseLinear", f"prunekit.deploy.kernels.{kernels.prebuilt_name(isa)}"]
    assert "compiling" not in done.stderr
    forced = _run(FIRST_FORWARD, PRUNEKIT_KERNELS="portable")  # the other library of the same install
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert forced.stdout.split()[1] == f"prunekit.deploy.kernels.{kernels.prebuilt_name('portable')}"


def _cpu_has_avx512() -> bool:
    import torch

    return torch.backends.cpu.get_cpu_capability() == "AVX512"


@pytest.mark.skipif(not PREBUILT, reason="installed without the ahead-of-time build")
def test_a_prebuilt_library_whose_key_differs_is_not_loaded(tmp_path):
    # what a checkout whose sources changed after install sees: the key no longer matches, so
    # _prebuilt declines (load() then builds on first use instead of running stale code)
    code = ("from prunekit.deploy import kernels\n"
            "assert kernels._prebuilt('portable', 'not-the-key') is None\n"
            "key = kernels._build_key(kernels.os.path.dirname(kernels.__file__), kernels.build_flags('portable'))\n"
            "assert kernels._prebuilt('portable', key) is not None\n"
            "print('ok')\n")
    done = _run(code)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
