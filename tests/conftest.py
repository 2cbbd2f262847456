"""Shared fixtures: one real run of the tiny recipe, reused by the tests that only read its outputs."""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).parent
TINY_RECIPE = TESTS / "recipes" / "tiny.yaml"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny recipe run end to end (real training, export, onnxruntime, runner) into a temp folder."""
    import edgekd

    out = tmp_path_factory.mktemp("runs")
    return edgekd.run(edgekd.load_recipe(TINY_RECIPE), output_dir=out)
