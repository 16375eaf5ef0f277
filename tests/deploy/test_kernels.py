"""The kernels' build: its key follows what it depends on; the install-time libraries are used when it matches,
and an install or a process without a compiler goes on."""

from __future__ import annotations

import importlib.util
import json
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
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(HERE))))  # the checkout (editable install)


def _prebuilt_module(isa: str) -> str:
    """The module name setup.py gives the library of ``isa`` built from these sources with this torch."""
    return kernels._prebuilt_name(isa, kernels._build_key(HERE, kernels._build_flags(isa)))


PREBUILT = importlib.util.find_spec(f"prunekit.deploy.kernels.{_prebuilt_module('portable')}") is not None
# make test sets PRUNEKIT_REQUIRE_PREBUILT=1: there, an install that lost its ahead-of-time build fails
needs_prebuilt = pytest.mark.skipif(not PREBUILT and not os.environ.get("PRUNEKIT_REQUIRE_PREBUILT"),
                                    reason="installed without the ahead-of-time build (PRUNEKIT_NO_PREBUILD, "
                                    "an isolated build, or sources edited since install)")
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


@needs_prebuilt
def test_a_fresh_process_runs_the_prebuilt_kernels_without_compiling():
    done = _run(FIRST_FORWARD)
    assert done.returncode == 0, done.stderr[-2000:]
    isa = "avx512" if kernels.cpu_has_avx512() else "portable"
    assert done.stdout.split() == ["SparseLinear", f"prunekit.deploy.kernels.{_prebuilt_module(isa)}"]
    assert "compiling" not in done.stderr
    forced = _run(FIRST_FORWARD, PRUNEKIT_KERNELS="portable")  # the other library of the same install
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert forced.stdout.split()[1] == f"prunekit.deploy.kernels.{_prebuilt_module('portable')}"


@needs_prebuilt
def test_a_prebuilt_library_of_another_key_is_not_loaded_and_no_compiler_means_dense_with_one_warning():
    # what an environment whose torch changed after install sees: the key differs, so no prebuilt
    # library is imported; the first-use build then fails (no compiler here, stubbed) and load()
    # returns None with one warning instead of running stale code
    code = ("import sys, warnings, torch, torch.utils.cpp_extension as ext\n"
            "torch.__version__ = '0.0'\n"
            "def no_compiler(*a, **k): raise OSError('no C++ compiler')\n"
            "ext.load = no_compiler\n"
            "from prunekit.deploy import kernels\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    assert kernels.load('portable') is None and kernels.load('portable') is None\n"
            "assert len(w) == 1 and 'no C++ compiler' in str(w[0].message) and 'run dense' in str(w[0].message)\n"
            "assert not [m for m in sys.modules if '_prebuilt_' in m], sys.modules\n"
            "print('ok')\n")
    done = _run(code)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_an_install_without_a_working_compiler_goes_on_and_builds_nothing(tmp_path):
    for part in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, part), tmp_path / part)
    shutil.copytree(os.path.join(ROOT, "src"), tmp_path / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "_prebuilt_*", "*.egg-info"))
    done = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "CXX": "/nonexistent/c++", "CC": "/nonexistent/cc"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "the sparse CPU kernels will build on first use" in done.stderr
    assert not list((tmp_path / "src" / "prunekit" / "deploy" / "kernels").glob("_prebuilt_*"))


def test_the_first_use_build_is_announced_only_while_nothing_is_cached_where_it_builds(tmp_path):
    # torch's build is stubbed: it records where it was asked to build and fails (no compiler needed)
    code = ("import json, os, sys, warnings, torch, torch.utils.cpp_extension as ext\n"
            "torch.__version__ = '0.0'  # no prebuilt library matches: the first-use path\n"
            "def stub(**kw):\n"
            "    print(json.dumps([kw['name'], kw['build_directory']]))\n"
            "    raise OSError('stubbed build')\n"
            "ext.load = stub\n"
            "from prunekit.deploy import kernels\n"
            "with warnings.catch_warnings():\n"
            "    warnings.simplefilter('ignore')\n"
            "    kernels.load('portable')\n")
    first = _run(code, TORCH_EXTENSIONS_DIR=str(tmp_path))
    name, where = json.loads(first.stdout.strip().splitlines()[-1])
    assert "compiling the sparse CPU kernels" in first.stderr and where.startswith(str(tmp_path))
    open(os.path.join(where, f"{name}.so"), "w").close()  # what a finished build leaves there
    cached = _run(code, TORCH_EXTENSIONS_DIR=str(tmp_path))
    assert json.loads(cached.stdout.strip().splitlines()[-1]) == [name, where]
    assert "compiling" not in cached.stderr, cached.stderr[-2000:]


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads Linux's /proc/self/maps")
def test_the_kernels_use_the_openmp_runtime_torch_ships_not_a_second_one():
    # a fresh process (other libraries in the test session, scikit-learn's for one, bring their own)
    code = ("import torch\n"
            "from prunekit.deploy import kernels\n"
            "before = {l.split()[-1] for l in open('/proc/self/maps') if 'gomp' in l or 'iomp' in l}\n"
            "assert kernels.load() is not None\n"
            "after = {l.split()[-1] for l in open('/proc/self/maps') if 'gomp' in l or 'iomp' in l}\n"
            "print(len(before), len(after), sorted(after - before))\n")
    done = _run(code)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["1", "1", "[]"], done.stdout  # torch's own, and loading the kernels adds none
