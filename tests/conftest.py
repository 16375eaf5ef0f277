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
