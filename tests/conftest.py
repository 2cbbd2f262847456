"""Shared fixtures: one real run of the tiny recipe, reused by the tests that only read its outputs."""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).parent
TINY_RECIPE = TESTS / "recipes" / "tiny.yaml"


def _seed_rngs() -> None:
    from edgekd.distill.trainer import seed_everything

    seed_everything(0)


@pytest.fixture(scope="module", autouse=True)
def _seeded_module():
    """Seed torch and numpy before each module's fixtures. torch draws a random initial seed per process, so an
    unseeded model init made a test's outcome depend on the run: a margin that held on one draw failed on another."""
    _seed_rngs()


@pytest.fixture(autouse=True)
def _seeded_test():
    """The same for each test, so a test's draw does not depend on which tests ran before it in the worker."""
    _seed_rngs()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny recipe run end to end (real training, export, onnxruntime, runner) into a temp folder."""
    import edgekd

    out = tmp_path_factory.mktemp("runs")
    return edgekd.run(edgekd.load_recipe(TINY_RECIPE), output_dir=out)
