"""A text recipe runs the text stages only (teacher → distill with distill.text → scratch → export → bench →
report): the classification pipeline's sections it cannot honour are refused when the recipe loads, not ignored."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekd.errors import RecipeError
from edgekd.recipe import load_recipe

TEXT = {"name": "x", "task": "text", "student": {"model": {"family": "text_bag"}}}


@pytest.mark.parametrize("section, named", [
    ({"compress": {"enabled": True}}, r"compress\.enabled"),
    ({"distill": {"strategy": "mutual"}}, r"distill\.strategy: mutual"),
    ({"distill": {"features": [{"loss": "hint", "student": "embed", "teacher": "encoder"}]}}, r"distill\.features"),
    ({"distill": {"transfer_set": "labelled_only"}}, r"distill\.transfer_set: labelled_only"),
    ({"teacher": {"model": {"family": "resnet"}}}, r"teacher\.model"),  # the text teacher is teacher.hf
    ({"teacher": {"train": {"epochs": 3}}}, r"teacher\.train"),  # its head is fitted, not trained by epochs
])
def test_a_text_recipe_refuses_what_the_text_stages_would_ignore(section: dict, named: str) -> None:
    with pytest.raises(RecipeError, match=named) as caught:
        load_recipe({**TEXT, **section})
    assert "task: text" in caught.value.what and caught.value.fix


def test_a_text_recipe_refuses_a_teacher_checkpoint(tmp_path: Path) -> None:
    """The text teacher is teacher.hf; an existing checkpoint would otherwise be passed over in silence."""
    (tmp_path / "teacher.pt").write_bytes(b"")
    with pytest.raises(RecipeError, match=r"teacher\.checkpoint.*task: text"):
        load_recipe({**TEXT, "teacher": {"checkpoint": str(tmp_path / "teacher.pt")}})


def test_a_text_runs_resolved_recipe_loads_again(tmp_path: Path) -> None:
    """recipe.yaml in a run directory holds every field, defaults included (benchmarks reload it)."""
    from edgekd.recipe import dump_recipe

    (tmp_path / "recipe.yaml").write_text(dump_recipe(load_recipe(TEXT)))
    assert load_recipe(tmp_path / "recipe.yaml").task == "text"


def test_the_same_sections_load_in_a_classification_recipe() -> None:
    load_recipe({"name": "x", "compress": {"enabled": True}, "distill": {"strategy": "mutual"}})


def test_the_text_baseline_is_retrained_only_for_what_it_reads() -> None:
    """The text scratch stage hashed the whole distill section, so a change to the KD loss or the text KD terms
    (which it never reads) retrained it; its training settings still do."""
    from types import SimpleNamespace

    from edgekd.recipe import load_recipe
    from edgekd.text.stages import scratch_inputs

    def inputs(distill: dict) -> dict:
        recipe = load_recipe({"name": "t", "task": "text", "distill": distill,
                              "student": {"model": {"family": "text_bag"}}})
        return scratch_inputs(SimpleNamespace(recipe=recipe, text=SimpleNamespace(fingerprint=lambda: "corpus")))

    base = inputs({"train": {"epochs": 2}})
    assert inputs({"train": {"epochs": 2}, "loss": {"temperature": 2.0}}) == base
    assert inputs({"train": {"epochs": 3}}) != base
