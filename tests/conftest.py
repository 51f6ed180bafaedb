"""Shared fixtures. Real data comes from ../shared/data/criteo (never copied into the repo)."""
from __future__ import annotations

import os

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_CRITEO = os.path.normpath(os.path.join(REPO_ROOT, "..", "shared", "data", "criteo"))


def _criteo_file(name: str) -> str:
    path = os.path.join(SHARED_CRITEO, name)
    if not os.path.isfile(path):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is missing; CI must have ../shared/data/criteo beside the checkout")
        pytest.skip(f"{path} not found (the shared Criteo samples sit beside the checkout)")
    return path


@pytest.fixture(scope="session")
def slot_sample() -> str:
    """80 real Criteo rows in PaddleRec slot format (with click labels)."""
    return _criteo_file("slot_sample.txt")


@pytest.fixture(scope="session")
def raw_sample() -> str:
    """100 real Criteo rows in the raw tab-separated format (with labels)."""
    return _criteo_file("raw_sample.txt")
