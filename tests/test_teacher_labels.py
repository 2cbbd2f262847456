"""data.teacher_labels: the teacher learns from every label of the training split (all, the default) or only from
the students' labelled subset (students), so a KD-vs-scratch comparison can be fair: with `all`, part of the KD
gain is labels the scratch baseline never saw (benchmarks/kd_teacher_labels.py: +4.6 points against +1.4)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

import edgekd
from edgekd.errors import RecipeError
from edgekd.recipe import load_recipe
from edgekd.rundir import read_json

TINY = {"name": "labels", "seed": 0, "data": {"name": "digits", "label_fraction": 0.1},
        "teacher": {"model": {"family": "cnn", "params": {"width": 8, "depth": 2, "hidden": 32}},
                    "train": {"epochs": 3}},
        "student": {"model": {"family": "mlp", "params": {"width": 16}}},
        "distill": {"train": {"epochs": 2}},
        "export": {"formats": ["onnx"], "targets": {"teacher": ["fp32"], "student": [], "scratch": []},
                   "qat": {"enabled": False}},
        "bench": {"enabled": False}}


def _with(recipe: dict, **data) -> dict:
    return {**recipe, "data": {**recipe["data"], **data}}


def test_students_trains_the_teacher_on_the_students_labels_and_leaves_scratch_alone(tmp_path, one_thread):
    """A run switched to `students` retrains the teacher (and the student it teaches) on exactly the students'
    labelled samples: its weights are those of a teacher fitted on x_train[labelled] with the teacher's steps and
    seed (the hand-made teacher of benchmarks/kd_teacher_labels.py); the scratch baseline, which never reads the
    teacher, is not retrained. The report says which labels the teacher saw."""
    import torch

    from edgekd.checkpoints import load_weights
    from edgekd.distill.api import load_splits, new_model
    from edgekd.distill.losses import LOSSES
    from edgekd.distill.trainer import fit, steps_for

    first = edgekd.run(load_recipe(TINY), output_dir=tmp_path)
    record = first.rundir.stage_record("teacher")["metrics"]
    assert (record["teacher_labels"], record["labelled_samples"]) == ("all", 1257)
    (said,) = [f for f in read_json(first.summary_path)["findings"] if f.startswith("Distillation")]
    assert "The teacher trained on the labels of all 1257 training samples" in said
    assert "data.teacher_labels: students trains it on the students' 126 labels alone" in said

    recipe = load_recipe(_with(TINY, teacher_labels="students"))
    second = edgekd.run(recipe, output_dir=tmp_path)
    assert {s: second.stages[s] for s in ("teacher", "distill", "scratch", "export")} == \
        {"teacher": "ran", "distill": "ran", "scratch": "skipped", "export": "ran"}
    splits = load_splits(recipe)
    record = second.rundir.stage_record("teacher")["metrics"]
    assert (record["teacher_labels"], record["labelled_samples"]) == ("students", int(splits.labelled.sum())) \
        == ("students", 126)
    (said,) = [f for f in read_json(second.summary_path)["findings"] if f.startswith("Distillation")]
    assert "The teacher trained on the labels of the same 126 samples (data.teacher_labels: students)" in said

    trained = new_model(recipe, splits, "teacher")
    load_weights(trained, second.rundir.checkpoints / "teacher.pt", role="teacher")
    by_hand = new_model(recipe, splits, "teacher")
    t = recipe.teacher.train
    fit(by_hand, splits.x_train[splits.labelled], splits.y_train[splits.labelled], loss_fn=LOSSES["ce"],
        steps=steps_for(len(splits.x_train), t.batch_size, t.epochs), batch_size=t.batch_size, lr=t.lr,
        weight_decay=t.weight_decay, seed=recipe.seed)
    ours, theirs = trained.state_dict(), by_hand.state_dict()
    assert all(torch.allclose(ours[k].float(), theirs[k].float(), atol=1e-6) for k in ours)


# Stage input hashes of the built-in demo recipe, computed by edgekd before data.teacher_labels existed (dd7ca34).
# A change here retrains every existing run of the demo at its next resume.
DEMO_HASHES = {"teacher": "0248a50dbec0dd0627ae94819310ca2c9a7ff9ad6c7319cd217087649dd496e5",
               "distill": "34c01ae4398a732aa6764bfe3b5d68e4376b6dcff84dfbe492d387ba509fed1d",
               "scratch": "0a7059ce934186c048d7231d9a3eff7efdd474cddd4a25b6e2379250c98c5715",
               "compress": "5fee6ac6fc436981d85e204877b792ac57a71da9f898a8623889e4296fcd2ef9"}


def _stage_hashes(recipe) -> dict[str, str]:
    from edgekd import stages
    from edgekd.pipeline import Context
    from edgekd.progress import SilentReporter
    from edgekd.rundir import RunDir, hash_obj

    ctx = Context(recipe=recipe, rundir=RunDir(Path(tempfile.mkdtemp()) / "x"), reporter=SilentReporter(),
                  hashes={"teacher": "t", "distill": "d"})
    return {name: hash_obj(getattr(stages, f"{name}_inputs")(ctx)) for name in DEMO_HASHES}


def test_the_default_keeps_the_stage_hashes_runs_had_before_the_field():
    """The field is hashed only where it narrows the teacher's labels: the default, and `students` at
    label_fraction 1 (the same teacher), keep every stage hash, so no existing run retrains; `students` at 0.1
    changes the teacher's and the distilled student's, never the scratch baseline's."""
    demo = load_recipe("demo").model_dump(mode="json")
    assert demo["data"]["teacher_labels"] == "all"
    assert _stage_hashes(load_recipe(demo)) == DEMO_HASHES
    full = _stage_hashes(load_recipe(_with(demo, label_fraction=1.0)))
    assert _stage_hashes(load_recipe(_with(demo, label_fraction=1.0, teacher_labels="students"))) == full
    narrowed = _stage_hashes(load_recipe(_with(demo, teacher_labels="students")))
    assert [name for name in DEMO_HASHES if narrowed[name] != DEMO_HASHES[name]] == ["teacher", "distill"]


def test_the_text_stages_hash_the_data_section_without_the_field():
    """The text stages hash data too: its default must not change their hashes either."""
    from types import SimpleNamespace

    from edgekd.text.stages import scratch_inputs

    recipe = load_recipe({"name": "t", "task": "text", "student": {"model": {"family": "text_bag"}}})
    data = scratch_inputs(SimpleNamespace(recipe=recipe, text=SimpleNamespace(fingerprint=lambda: "c")))["data"]
    assert "teacher_labels" not in data and data["label_fraction"] == 0.1


def test_a_bad_value_names_the_field_and_the_choices():
    with pytest.raises(RecipeError) as err:
        load_recipe({"data": {"teacher_labels": "student"}})
    assert "data.teacher_labels: must be one of 'all' or 'students', got 'student'" in err.value.what
    assert err.value.fix


def test_students_is_refused_where_it_would_be_ignored(tmp_path):
    """A text recipe's teacher head is fitted on every labelled sentence, and a loaded teacher.checkpoint is not
    trained: there `students` would change nothing, so it is refused rather than ignored."""
    with pytest.raises(RecipeError, match=r"data\.teacher_labels: students cannot be used with task: text") as err:
        load_recipe({"name": "t", "task": "text", "student": {"model": {"family": "text_bag"}},
                     "data": {"teacher_labels": "students"}})
    assert "remove data.teacher_labels" in err.value.fix
    checkpoint = tmp_path / "teacher.pt"
    checkpoint.write_bytes(b"")
    with pytest.raises(RecipeError, match="the run trains no teacher") as err:
        load_recipe({"teacher": {"checkpoint": str(checkpoint)}, "data": {"teacher_labels": "students"}})
    assert "remove teacher.checkpoint" in err.value.fix
    members = [{"model": {"family": "mlp"}}]  # an ensemble member the run trains: it takes the setting
    load_recipe({"teacher": {"checkpoint": str(checkpoint)}, "data": {"teacher_labels": "students"},
                 "distill": {"strategy": "ensemble", "ensemble": {"members": members}}})


def test_label_fraction_1_with_students_is_the_all_labels_teacher():
    """At label_fraction 1 the students see every label: `students` is accepted (a sweep over label_fraction
    need not special-case 1) and trains on the very arrays `all` does."""
    from edgekd.distill.api import load_splits, teacher_labelled

    recipe = load_recipe({"data": {"label_fraction": 1.0, "teacher_labels": "students"}})
    x, y = teacher_labelled(recipe, load_splits(recipe))
    splits = load_splits(recipe)
    assert np.array_equal(x, splits.x_train) and np.array_equal(y, splits.y_train)


def test_a_text_runs_kd_finding_does_not_offer_the_switch_it_refuses():
    """A text run's finding told to set data.teacher_labels: students, which text recipes refuse."""
    from edgekd.bench.report import findings

    models = {"teacher": {"test_accuracy": 0.8, "labelled_samples": 3000, "source": "/hf/minilm"},
              "student": {"test_accuracy": 0.7, "strategy": "text_kd", "labelled_samples": 300,
                          "transfer_samples": 9000},
              "scratch": {"test_accuracy": 0.6, "labelled_samples": 300}}
    (said,) = [f for f in findings({"rows": [], "models": models, "recipe": {"task": "text"}})
               if f.startswith("Distillation")]
    assert said.endswith("The teacher's class head was fitted on the labels of all 3000 labelled training "
                         "sentences, so part of the gain can be labels reaching the student through it."), said
    assert "teacher_labels" not in said
