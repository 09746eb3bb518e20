"""Shared fixtures: where the real models and images are, and the CI rule.

Tests that need `../shared` skip with a reason where it is absent, except
under `CI=true`, where its absence is a failure.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("LITED_SHARED", ROOT.parent / "shared"))


def need_shared(*parts: str) -> Path:
    """Path under ../shared, or skip (fail under CI=true) when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        msg = f"{path} is absent (the real models and images live in ../shared)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture
def shared_models() -> Path:
    return need_shared("models")


@pytest.fixture
def shared_images() -> Path:
    return need_shared("images")
