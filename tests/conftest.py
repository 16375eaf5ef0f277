"""Fixtures; helpers live in tests/helpers.py."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

from tests.helpers import Net

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True)  # CI must not flake
settings.register_profile("thorough", max_examples=600, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Single cases of a parametrized test as slow as the tests marked @pytest.mark.slow; a decorator would mark every
# case of the test, and the others are quick.
SLOW_CASES = {
    "tests/structured/test_timm_hf.py::test_timm_prunes_and_trains[swin_tiny_patch4_window7_224]",
}


def pytest_collection_modifyitems(items):
    for item in items:
        if item.nodeid in SLOW_CASES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def sparse_kernels():
    """prunekit's C++ sparse kernels (``prunekit.deploy.kernels.load()``), built or loaded once a session.

    The first build for a machine compiles for about a minute (torch caches it afterwards); taking this
    fixture puts that cost in one place, the setup of the first test that needs the kernels (``--durations``
    shows it as ``setup``), instead of inside whichever test happened to call ``load()`` first. None where
    they cannot be built (``load()`` warns; callers keep dense layers), so tests that need them still skip.
    """
    from prunekit.deploy.kernels import load

    return load()


@pytest.fixture
def net():
    torch.manual_seed(0)
    return Net()


@pytest.fixture
def x():
    torch.manual_seed(1)
    return torch.randn(2, 3, 4, 4)
