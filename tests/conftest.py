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


@pytest.fixture
def net():
    torch.manual_seed(0)
    return Net()


@pytest.fixture
def x():
    torch.manual_seed(1)
    return torch.randn(2, 3, 4, 4)
