"""Resume audit: a changed recipe field reruns the stages whose results it changes, a damaged file is never used
silently. Real runs of tiny models (no bench, ONNX only, small budgets)."""

from __future__ import annotations

import edgekd
from edgekd.progress import SilentReporter


def _tiny(tmp_path, **overrides) -> dict:
    """A small recipe: an MLP teacher, one ONNX FP32 student artifact, no scratch baseline and no bench."""
    recipe = {"name": "audit", "seed": 0, "output_dir": str(tmp_path / "out"),
              "data": {"name": "digits", "label_fraction": 0.1},
              "teacher": {"model": {"family": "mlp", "params": {"width": 16}}, "train": {"epochs": 1}},
              "student": {"model": {"family": "mlp", "params": {"width": 8}}},
              "distill": {"train": {"epochs": 1}},
              "scratch": {"enabled": False},
              "export": {"formats": ["onnx"], "targets": {"student": ["fp32"]}, "qat": {"enabled": False}},
              "bench": {"enabled": False}}
    for path, value in overrides.items():
        *parents, leaf = path.split(".")
        section = recipe
        for key in parents:
            section = section.setdefault(key, {})
        section[leaf] = value
    return recipe


def _teacher_checkpoint(tmp_path, recipe: dict):
    """A teacher checkpoint of the recipe's architecture (untrained: only its bytes matter here)."""
    from edgekd.checkpoints import save_checkpoint
    from edgekd.distill.api import load_splits, new_model

    r = edgekd.load_recipe(recipe)
    return save_checkpoint(new_model(r, load_splits(r), "teacher"), tmp_path / "teacher.pt", role="teacher")


def _run(recipe: dict) -> dict[str, str]:
    return edgekd.run(edgekd.load_recipe(recipe), reporter=SilentReporter()).stages


def test_an_ensemble_member_trained_by_the_run_retrains_when_the_teacher_budget_changes(tmp_path):
    """Members without a checkpoint train with teacher.train; a teacher loaded from its checkpoint is the same
    bytes whatever teacher.train says, so the distill stage's hash must cover teacher.train itself."""
    recipe = _tiny(tmp_path, **{"distill.strategy": "ensemble",
                                "distill.ensemble": {"members": [{"model": {"family": "mlp",
                                                                            "params": {"width": 8}}}]}})
    recipe["teacher"]["checkpoint"] = str(_teacher_checkpoint(tmp_path, recipe))
    assert _run(recipe)["distill"] == "ran"
    recipe["teacher"]["train"]["epochs"] = 3
    stages = _run(recipe)
    assert stages["distill"] == "ran", stages
