"""A recipe field that no step of the run reads does not rerun a stage: an export setting no target of the run
reads (int4.block_size without an int4 target), distill.cache (teacher outputs cached or computed each step give
the same student). Real runs of tiny models (no bench, ONNX only); the hashes of existing runs stay as they were."""

from __future__ import annotations

import copy
import shutil
import typing
from pathlib import Path

import pytest

import edgekd
from edgekd.export.artifact import Artifact
from edgekd.progress import SilentReporter
from edgekd.recipe import builtin_recipes, load_recipe
from edgekd.rundir import read_json

from conftest import TINY_RECIPE

TEXT_RECIPE = Path(__file__).parent / "recipes" / "text_tiny.yaml"
ROLES = {"teacher": [], "student": ["fp32", "int8_dynamic"], "scratch": [], "compressed": []}


def _image_recipe() -> dict:
    """MLPs trained for an epoch, a student exported as ONNX FP32 and dynamic INT8, no scratch baseline or bench."""
    return {"name": "relevance", "seed": 0, "data": {"name": "digits", "label_fraction": 0.1},
            "teacher": {"model": {"family": "mlp", "params": {"width": 16}}, "train": {"epochs": 1}},
            "student": {"model": {"family": "mlp", "params": {"width": 8}}},
            "distill": {"train": {"epochs": 1}}, "scratch": {"enabled": False},
            "export": {"formats": ["onnx"], "targets": copy.deepcopy(ROLES)}, "bench": {"enabled": False}}


def _text_recipe() -> dict:
    """text_tiny.yaml with one ONNX student (FP32 and dynamic INT8), no scratch baseline and no bench."""
    import yaml

    recipe = yaml.safe_load(TEXT_RECIPE.read_text())
    recipe["export"] = {"formats": ["onnx"], "targets": {"teacher": [], "student": ["fp32", "int8_dynamic"],
                                                         "scratch": []},
                        "parity": recipe["export"]["parity"]}
    recipe["scratch"] = {"enabled": False}
    recipe["bench"] = {"enabled": False}
    return recipe


def _set(recipe: dict, path: str, value: typing.Any) -> dict:
    """A copy of `recipe` with the dotted field `path` set to `value`."""
    recipe = copy.deepcopy(recipe)
    *parents, leaf = path.split(".")
    section = recipe
    for key in parents:
        section = section.setdefault(key, {})
    section[leaf] = value
    return recipe


def _run(recipe: dict, out: Path) -> tuple[dict[str, str], dict]:
    """(what each stage did, the manifest's stage records) of a run of `recipe` into `out`."""
    result = edgekd.run(edgekd.load_recipe(recipe), output_dir=out, reporter=SilentReporter())
    return result.stages, result.rundir.load_manifest()["stages"]


def _copy(run: tuple[dict, Path], tmp_path: Path) -> tuple[dict, Path]:
    """The base run's recipe and a copy of its run folder (runs of changed recipes must not touch the base)."""
    recipe, out = run
    shutil.copytree(out, tmp_path / "out")
    return recipe, tmp_path / "out"


def _records(recipe: dict, out: Path) -> dict:
    """The stage records of the run folder of `recipe` in `out`."""
    return read_json(out / recipe["name"] / "manifest.json")["stages"]


@pytest.fixture(scope="module")
def image_run(tmp_path_factory, one_thread) -> tuple[dict, Path]:
    recipe, out = _image_recipe(), tmp_path_factory.mktemp("relevance") / "out"
    stages, _ = _run(recipe, out)
    assert stages["export"] == "ran"
    return recipe, out


UNREAD_IMAGE = {  # field: a value no export of the image run reads (no int4, no int8_static, onnx only)
    "export.int4.block_size": 64, "export.int4.accuracy_level": 0, "export.parity.min_agreement_int4": 0.5,
    "export.calibration_samples": 64, "export.calibration_method": "entropy", "export.qat.enabled": True,
    "export.qat.epochs": 3, "export.qat.lr": 0.01, "export.qat.max_int8_loss": 2.0,
    "export.targets.scratch": ["fp32", "int8_dynamic"],  # scratch.enabled is false
    "export.targets.compressed": ["fp32", "int8_static"],  # compress.enabled is false
}


@pytest.mark.parametrize("field", UNREAD_IMAGE)
def test_a_field_the_run_does_not_read_reruns_no_stage(image_run, tmp_path, field):
    """Each exported (and benched and reported) the same files again."""
    recipe, out = _copy(image_run, tmp_path)
    before = _records(recipe, out)
    stages, after = _run(_set(recipe, field, UNREAD_IMAGE[field]), out)
    assert set(stages.values()) == {"skipped", "disabled"}, stages
    assert after == before  # the records (input hashes, finish times) are the ones the base run left


READ_IMAGE = {"export.int8_reduce_range": True, "export.mixed_precision_fallback": False,
              "export.parity.min_agreement": 0.5, "export.opset": 17}


@pytest.mark.parametrize("field", READ_IMAGE)
def test_a_field_the_export_reads_reruns_it(image_run, tmp_path, field):
    recipe, out = _copy(image_run, tmp_path)
    stages, _ = _run(_set(recipe, field, READ_IMAGE[field]), out)
    assert stages["export"] == "ran" and stages["distill"] == "skipped", stages


def test_int4_block_size_reruns_the_export_only_with_an_int4_target(image_run, tmp_path):
    recipe, out = _copy(image_run, tmp_path)
    recipe = _set(recipe, "export.int4.block_size", 64)
    assert _run(recipe, out)[0]["export"] == "skipped"
    recipe = _set(recipe, "export.targets.student", ["fp32", "int8_dynamic", "int4"])
    assert _run(recipe, out)[0]["export"] == "ran"
    stages, records = _run(_set(recipe, "export.int4.block_size", 16), out)
    assert stages["export"] == "ran" and stages["distill"] == "skipped", stages
    artifact = Artifact.load(out / "relevance" / "artifacts" / "student-onnx-int4")
    assert artifact.quantization["block_size"] == 16


def test_distill_cache_retrains_nothing_and_cache_topk_retrains_the_student(image_run, tmp_path):
    """The teacher's logits read from the cache or computed for the run are the same float32 values, and so is
    the student; cache_topk cuts the soft targets to the top k classes: another student."""
    recipe, out = _copy(image_run, tmp_path)
    before = _records(recipe, out)
    stages, after = _run(_set(recipe, "distill.cache", False), out)
    assert set(stages.values()) == {"skipped", "disabled"} and after == before, stages
    stages, _ = _run(_set(recipe, "distill.cache_topk", 3), out)
    assert stages["distill"] == "ran", stages


def test_no_stage_hashes_distill_cache():
    """The compress stage's KD recovery and the export's QAT hash the distill section (or part of it) too."""
    from edgekd.pipeline import Context
    from edgekd.stages import compress_inputs, distill_inputs, export_inputs

    def inputs(cache: bool) -> list[dict]:
        recipe = load_recipe({"name": "cache", "distill": {"cache": cache}, "compress": {"enabled": True}})
        ctx = Context(recipe, rundir=None, reporter=SilentReporter(), hashes={"teacher": "t", "distill": "d"})
        return [distill_inputs(ctx), compress_inputs(ctx), export_inputs(ctx)]

    assert inputs(True) == inputs(False)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> tuple[dict, Path]:
    recipe, out = _text_recipe(), tmp_path_factory.mktemp("relevance-text") / "out"
    stages, _ = _run(recipe, out)
    assert stages["export"] == "ran"
    return recipe, out


def test_a_text_run_reruns_no_stage_for_what_its_export_does_not_read(text_run, tmp_path):
    """A text model's export has no mixed-precision fallback, no calibration and no QAT; its distillation reads
    its teacher's embeddings from its own cache whatever distill.cache says."""
    recipe, out = _copy(text_run, tmp_path)
    before = _records(recipe, out)
    unread = {"export.mixed_precision_fallback": False, "export.calibration_samples": 64,
              "export.calibration_method": "entropy", "export.qat.epochs": 3, "export.int4.block_size": 64}
    for fields in (unread, {"distill.cache": False}):
        for field, value in fields.items():
            recipe = _set(recipe, field, value)
        stages, after = _run(recipe, out)
        assert set(stages.values()) == {"skipped", "disabled"}, (fields, stages)
        assert after == before, fields
    stages, _ = _run(_set(recipe, "export.int8_reduce_range", True), out)  # read by ONNX INT8
    assert stages["export"] == "ran" and stages["distill"] == "skipped", stages


# -- hashes of existing runs -------------------------------------------------------------------------------------

def test_a_default_recipes_export_hash_is_the_one_it_had():
    """The export stage hashed the whole export section: a run whose unread fields are at their defaults must
    keep its hash, or every existing run would export again after the upgrade."""
    from edgekd import __version__
    from edgekd.compress.isa import choose_reduce_range, recipe_targets
    from edgekd.pipeline import Context
    from edgekd.rundir import hash_obj
    from edgekd.stages import export_inputs

    recipe = load_recipe({"name": "default"})
    ctx = Context(recipe, rundir=None, reporter=SilentReporter(), hashes={"teacher": "t", "distill": "d",
                                                                           "scratch": "s"})
    distill = recipe.section("distill")["distill"]
    old = {"data": recipe.data.hashed(), "data_fingerprint": ctx.data_fingerprint,
           "models": {"teacher": "t", "student": "d", "scratch": "s"},
           "export": recipe.section("export")["export"],  # the whole section
           "int8_reduce_range": choose_reduce_range(recipe.export.int8_reduce_range,
                                                    recipe_targets(recipe))["reduce_range"],
           "qat": {**{k: distill[k] for k in ("loss", "train", "transfer_set", "strategy", "blackbox")},
                   "checkpoints": {"teacher": "t", "distill": "d"}}}
    assert hash_obj({"edgekd": __version__, **export_inputs(ctx)}) == hash_obj({"edgekd": __version__, **old})


@pytest.mark.parametrize("source", [*builtin_recipes(), TINY_RECIPE, TEXT_RECIPE])
def test_the_shipped_recipes_hash_their_whole_export_and_distill_sections(source):
    """Every field they set is read (or at its default): their runs export and distil nothing again."""
    from edgekd.stages import hashed_distill_section, hashed_export_section

    recipe = load_recipe(source, check_names=False)
    assert hashed_export_section(recipe) == recipe.section("export")["export"]
    assert hashed_distill_section(recipe) == recipe.section("distill")["distill"]


RULES = [  # (export section, field, whether the export reads it)
    ({"formats": ["tflite"], "targets": {"student": ["fp32"]}}, "opset", False),
    ({"formats": ["onnx", "tflite"], "targets": {"student": ["int4"]}}, "int4.tflite_block_size", True),
    ({"formats": ["onnx", "tflite"], "targets": {"student": ["int4"]}}, "parity.min_agreement", False),
    ({"formats": ["tflite"], "targets": {"student": ["int8_static"]}}, "calibration_samples", True),
    ({"formats": ["tflite"], "targets": {"student": ["int8_static"]}}, "calibration_method", False),
    ({"targets": {"student": ["int8_static"]}, "qat": {"enabled": False}}, "qat.epochs", False),
    ({"targets": {"student": ["int8_static"]}, "qat": {"enabled": False}}, "qat.enabled", True),
    ({"targets": {"student": ["int8_static"]}}, "qat.max_int8_loss", True),
    ({"targets": {"student": ["int8_static"]}, "qat": {"enabled": True}}, "qat.max_int8_loss", False),
    ({"targets": {"student": ["int8_qat"]}}, "qat.lr", True),
    ({"targets": {"student": ["int8_qat"]}}, "calibration_samples", True),
    ({"targets": {"student": ["int8_qat"]}}, "mixed_precision_fallback", False),  # the QAT file has none
    ({"targets": {"student": ["int8_qat"]}}, "int8_reduce_range", True),
    ({"targets": {"student": ["int8_static"]}, "calibration_method": "percentile"}, "calibration_percentile", True),
    ({"targets": {"student": ["int8_dynamic"]}}, "calibration_percentile", False),
]


@pytest.mark.parametrize(("export", "field", "read"), RULES)
def test_which_export_fields_a_run_reads(export, field, read):
    from edgekd.stages import export_fields_read

    assert export_fields_read(load_recipe({"name": "rules", "export": export}))[field] is read


def test_a_text_export_reads_no_mixed_precision_fallback():
    from edgekd.stages import export_fields_read

    reads = export_fields_read(load_recipe(TEXT_RECIPE, check_names=False))
    assert reads["int8_reduce_range"] and not reads["mixed_precision_fallback"]


def test_every_export_field_has_a_rule():
    """A field added to ExportConfig without saying who reads it would be hashed as read: safe, but say it here."""
    from pydantic import BaseModel

    from edgekd.recipe import ExportConfig
    from edgekd.stages import export_fields_read

    def leaves(model: type[BaseModel], prefix: str = "") -> set[str]:
        out = set()
        for name, info in model.model_fields.items():
            kind = info.annotation
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                out |= leaves(kind, f"{prefix}{name}.")
            elif name == "targets":
                out |= {f"{prefix}targets.{role}" for role in ROLES}
            else:
                out.add(prefix + name)
        return out

    recipe = load_recipe({"name": "all", "compress": {"enabled": True}})
    assert set(export_fields_read(recipe)) == leaves(ExportConfig)


def test_the_same_teacher_at_another_path_redoes_no_stage_after_the_teacher(text_run, tmp_path):
    """The teacher checkpoint named its encoder by path: the same weights in another folder (a moved venv or model
    folder) wrote other bytes, and distillation, export and the rest ran again for nothing. The teacher stage
    reruns (the recipe's teacher.hf changed; its outputs are cached by the weights' sha256) to the same bytes."""
    from edgekd.text.teacher import default_teacher_folder

    recipe, out = _copy(text_run, tmp_path)
    before = _records(recipe, out)
    source = default_teacher_folder()
    moved = tmp_path / "elsewhere" / source.name
    shutil.copytree(source, moved)
    stages, after = _run(_set(recipe, "teacher.hf", str(moved)), out)
    assert stages["teacher"] == "ran", stages
    assert stages["distill"] == stages["export"] == stages["report"] == "skipped", stages
    assert after["teacher"]["output_hash"] == before["teacher"]["output_hash"]
    assert after["teacher"]["metrics"]["source"] == str(moved)  # the manifest still says where it was read from
