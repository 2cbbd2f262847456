"""The stages of a run. Each has an `*_inputs` function (what its hash covers) and a `*_run` function
that does the work and returns (output files, extra manifest fields such as metrics)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekd.pipeline import Context, input_arrays_for_bench, write_test_split
from edgekd.recipe import DistillConfig, Recipe
from edgekd.rundir import atomic_write_json, sha256_file


def _data_inputs(ctx: Context) -> dict[str, Any]:
    return {"data": ctx.recipe.data.hashed(), "data_fingerprint": ctx.data_fingerprint}


def teacher_labels_inputs(ctx: Context) -> dict[str, Any]:
    """data.teacher_labels in the hash of a stage that trains a teacher, only when it narrows the teacher's
    labels: the default (or `students` at label_fraction 1, the same teacher) keeps the hash runs had before."""
    return {"teacher_labels": ctx.recipe.data.teacher_labels} if ctx.recipe.data.teacher_subset else {}


def _evaluate(model, ctx: Context) -> dict[str, Any]:
    from edgekd.distill.trainer import accuracy, predict_logits
    from edgekd.export.verify import per_class_accuracy
    from edgekd.models import count_parameters

    s = ctx.splits
    logits = predict_logits(model, s.x_test)
    return {"test_accuracy": accuracy(logits, s.y_test),
            "val_accuracy": accuracy(predict_logits(model, s.x_val), s.y_val),
            "per_class_accuracy": per_class_accuracy(logits, s.y_test, s.num_classes),
            # which test samples it gets right ("0"/"1" in split order): two models' accuracies on the same samples
            # are compared sample by sample (the report's KD-vs-scratch test), not as two independent rates
            "test_correct": "".join("1" if ok else "0" for ok in logits.argmax(axis=1) == s.y_test),
            "parameters": count_parameters(model)}


def _save(model, ctx: Context, role: str, metrics: dict[str, Any], **meta: Any) -> Path:
    from edgekd.checkpoints import save_checkpoint
    from edgekd.pipeline import is_writer

    path = ctx.rundir.checkpoints / f"{role}.pt"
    if not is_writer():  # another rank of a distributed run: rank 0 holds the same weights and saves them
        return path
    data = ctx.recipe.data
    data_meta = {"name": data.name, "seed": data.seed, "val_fraction": data.val_fraction,
                 "test_fraction": data.test_fraction, "label_fraction": data.label_fraction}
    return save_checkpoint(model, path, role=role, run=ctx.recipe.name, data=data_meta, metrics=metrics, **meta)


# -- teacher -------------------------------------------------------------------------------

def teacher_inputs(ctx: Context) -> dict[str, Any]:
    checkpoint = ctx.recipe.teacher.checkpoint
    return {**_data_inputs(ctx), "teacher": ctx.recipe.section("teacher")["teacher"], "seed": ctx.recipe.seed,
            "checkpoint_sha256": sha256_file(checkpoint) if checkpoint and Path(checkpoint).is_file() else None,
            **teacher_labels_inputs(ctx)}


def teacher_run(ctx: Context) -> tuple[list[Path], dict[str, Any]]:
    """Train the teacher on the labels of data.teacher_labels (all, or the students'), or load the recipe's
    checkpoint."""
    from edgekd.checkpoints import load_weights
    from edgekd.distill.api import teacher_labelled, train_classifier
    from edgekd.distill.lineage import checkpoint_generation

    ctx.preflight()
    cfg = ctx.recipe.teacher
    model = ctx.model("teacher")
    if cfg.checkpoint is not None:
        load_weights(model, Path(cfg.checkpoint), role="teacher")
        source = {"source": "checkpoint", "checkpoint": str(cfg.checkpoint)}
        generation = checkpoint_generation(Path(cfg.checkpoint))
        train_seconds = 0.0
    else:
        result = train_classifier(model, ctx.recipe, ctx.splits, seed=ctx.recipe.seed, description="train teacher",
                                  reporter=ctx.reporter)
        # which labels it saw, for the report beside the students' (a checkpoint's are not known to the run)
        source = {"source": "trained", "steps": result.steps, "teacher_labels": ctx.recipe.data.teacher_labels,
                  "labelled_samples": int(len(teacher_labelled(ctx.recipe, ctx.splits)[1]))}
        train_seconds = result.seconds
        generation = 0
    metrics = {**_evaluate(model, ctx), "train_seconds": round(train_seconds, 2), "generation": generation, **source}
    # the path it was loaded from stays in the manifest: in the checkpoint, the same weights at another path (a
    # moved file, an absolute path for a relative one) gave other bytes and redid every stage after this one
    kept = {k: v for k, v in metrics.items() if k != "checkpoint"}
    path = _save(model, ctx, "teacher", kept, generation=generation)
    return [path], {"metrics": metrics}


# -- distilled student ---------------------------------------------------------------------

def _blackbox_inputs(ctx: Context) -> dict[str, Any]:
    """The content of a black-box run's teacher outputs (a file or an artifact; a callable is known by name)."""
    from edgekd.distill.blackbox import artifact_in

    d = ctx.recipe.distill
    if d.strategy != "blackbox" or not Path(d.blackbox.source).exists():
        return {}
    source = Path(d.blackbox.source)
    return {"blackbox_sha256": sha256_file(artifact_in(source) if source.is_dir() else source)}


def distill_inputs(ctx: Context) -> dict[str, Any]:
    d = ctx.recipe.distill
    extra = _blackbox_inputs(ctx)
    if d.strategy == "ensemble":
        extra["member_checkpoints"] = [sha256_file(m.checkpoint) if m.checkpoint and Path(m.checkpoint).is_file()
                                       else None for m in d.ensemble.members]
        extra.update(_member_training(ctx))
    # teacher_labels too: an ensemble's members without a checkpoint are trained here, on those labels
    return {**_data_inputs(ctx), "teacher": ctx.hashes["teacher"], "seed": ctx.recipe.seed,
            **ctx.recipe.section("student"), "distill": hashed_distill_section(ctx.recipe), **extra,
            **teacher_labels_inputs(ctx)}


def hashed_distill_section(recipe: Recipe) -> dict[str, Any]:
    """The distill section as stage hashes take it, with distill.cache at its default: the cached teacher logits
    are the float32 bytes computed without the cache, so the student is the same bit for bit (standard, feature
    terms, ensemble, progressive; other strategies and text runs do not read it). cache_topk, which cuts the soft
    targets, stays."""
    section = recipe.section("distill")["distill"]
    section["cache"] = DistillConfig.model_fields["cache"].default
    return section


def _member_training(ctx: Context) -> dict[str, Any]:
    """teacher.train when the distill stage trains an ensemble member (one without a checkpoint) with it: the
    teacher stage's output does not carry it when the teacher is loaded from a checkpoint (the same bytes
    whatever teacher.train says), and the stage was reused with members trained on the old budget."""
    if all(m.checkpoint is not None for m in ctx.recipe.distill.ensemble.members):
        return {}
    return {"member_training": ctx.recipe.section("teacher")["teacher"]["train"]}


def _teacher_generation(ctx: Context) -> int:
    from edgekd.distill.lineage import checkpoint_generation

    return checkpoint_generation(ctx.rundir.checkpoints / "teacher.pt")


def _blackbox_generation(ctx: Context) -> int:
    from edgekd.distill.lineage import artifact_generation

    return artifact_generation(ctx.recipe.distill.blackbox.source)


def distill_run(ctx: Context) -> tuple[list[Path], dict[str, Any]]:
    """Teach the student with the recipe's strategy (distill.strategy), on the transfer set."""
    from edgekd.distill.api import build_job
    from edgekd.distill.lineage import check_teacher_generation
    from edgekd.distill.strategies import STRATEGIES, uses_teacher
    from edgekd.distill.trainer import distributed_world

    ctx.preflight()
    d = ctx.recipe.distill
    teacher_generation = _blackbox_generation(ctx) if d.strategy == "blackbox" else _teacher_generation(ctx)
    warning = None
    if uses_teacher(d):
        source = d.blackbox.source if d.strategy == "blackbox" else ctx.recipe.teacher.checkpoint or "teacher.pt"
        warning = check_teacher_generation(teacher_generation, source=str(source), allow=d.allow_generation)
        if warning:
            ctx.reporter.note(f"warning: {warning}")
    job = build_job(ctx.recipe, ctx.splits, lambda: ctx.trained("teacher"), reporter=ctx.reporter,
                    cache_root=ctx.recipe.output_dir / "cache" / "teacher", distributed=distributed_world()[1] > 1)
    outcome = STRATEGIES[d.strategy](job)
    student = outcome.student
    generation = (teacher_generation if uses_teacher(d) else 0) + outcome.generation_offset
    metrics = {**_evaluate(student, ctx), "train_seconds": round(outcome.seconds, 2), "steps": outcome.steps,
               "budget_steps_per_student": job.steps, "transfer_samples": int(len(job.x)),
               "labelled_samples": int((job.target >= 0).sum()), "strategy": d.strategy, "generation": generation,
               **({"generation_warning": warning} if warning else {})}
    teacher_sha = sha256_file(ctx.rundir.checkpoints / "teacher.pt")
    path = _save(student, ctx, "student", metrics, generation=generation, strategy=d.strategy,
                 teacher_checkpoint_sha256=teacher_sha if d.strategy != "blackbox" else None,
                 teacher_generation=teacher_generation, loss=d.loss.model_dump(),
                 details=_json_safe(outcome.details))
    return [path], {"metrics": metrics, "details": _json_safe(outcome.details)}


def _json_safe(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, default=float))


# -- scratch baseline ----------------------------------------------------------------------

def scratch_inputs(ctx: Context) -> dict[str, Any]:
    """What train_scratch reads: the student, the training settings and the transfer set (its size sets the
    shared step budget); a distillation loss or strategy changed beside them retrained it for nothing."""
    distill = ctx.recipe.section("distill")["distill"]
    return {**_data_inputs(ctx), "seed": ctx.recipe.seed, **ctx.recipe.section("student"),
            "distill": {"train": distill["train"], "transfer_set": distill["transfer_set"]}}


def scratch_run(ctx: Context) -> tuple[list[Path], dict[str, Any]]:
    """The student's architecture trained on the labelled samples alone, with the same steps and seed."""
    from edgekd.distill.api import train_scratch
    from edgekd.distill.trainer import distributed_world

    ctx.preflight()
    model, result = train_scratch(ctx.recipe, ctx.splits, ctx.reporter, distributed=distributed_world()[1] > 1)
    metrics = {**_evaluate(model, ctx), "train_seconds": round(result.seconds, 2), "steps": result.steps,
               "labelled_samples": int(ctx.splits.labelled.sum())}
    path = _save(model, ctx, "scratch", metrics, generation=0)
    return [path], {"metrics": metrics}


# -- compression ---------------------------------------------------------------------------

def compress_inputs(ctx: Context) -> dict[str, Any]:
    source = ctx.recipe.compress.source
    return {**_data_inputs(ctx), "source": ctx.hashes.get("distill" if source == "student" else "teacher"),
            "teacher": ctx.hashes.get("teacher"), "seed": ctx.recipe.seed,
            **ctx.recipe.section("compress"), "distill": hashed_distill_section(ctx.recipe), **_blackbox_inputs(ctx)}


def compress_run(ctx: Context) -> tuple[list[Path], dict[str, Any]]:
    """Prune the source model, then win back accuracy with KD fine-tuning; accuracy is measured at each step."""
    from edgekd.compress.recovery import compress_and_recover, recovers_from_blackbox

    cfg = ctx.recipe.compress
    source = ctx.trained(cfg.source)
    teacher = (None if recovers_from_blackbox(ctx.recipe) else
               ctx.trained("teacher" if cfg.recovery.teacher == "teacher" else cfg.source))
    outcome = compress_and_recover(ctx.recipe, ctx.splits, source, teacher, reporter=ctx.reporter)
    metrics = {**_evaluate(outcome.model, ctx), **outcome.metrics}
    path = _save(outcome.model, ctx, "compressed", metrics, architecture=cfg.source, prune_plan=outcome.plan,
                 steps=outcome.steps, generation=compressed_generation(ctx),
                 source_checkpoint_sha256=sha256_file(ctx.rundir.checkpoints / f"{cfg.source}.pt"))
    return [path], {"metrics": metrics, "steps": outcome.steps}


def compressed_generation(ctx: Context) -> int:
    """The compressed model's generation (edgekd.distill.lineage): its source's, or, when KD recovery trains it,
    one more than the recovery teacher's (a pruned teacher recovered from itself is a distilled model, generation
    1; a student recovered from itself, generation 2), whichever is higher."""
    from edgekd.compress.recovery import recovers_from_blackbox
    from edgekd.distill.lineage import checkpoint_generation

    cfg = ctx.recipe.compress
    source = checkpoint_generation(ctx.rundir.checkpoints / f"{cfg.source}.pt")
    if cfg.recovery.epochs <= 0:
        return source
    if recovers_from_blackbox(ctx.recipe):
        teacher = _blackbox_generation(ctx)
    elif cfg.recovery.teacher == "teacher":
        teacher = checkpoint_generation(ctx.rundir.checkpoints / "teacher.pt")
    else:
        teacher = source
    return max(source, teacher + 1)


# -- export --------------------------------------------------------------------------------

def made_roles(recipe: Recipe) -> list[str]:
    """The roles whose model the run makes (a text run has no compress stage): their export.targets are read,
    even an empty list (it exports nothing), and the other roles' are not."""
    made = {"scratch": recipe.scratch.enabled, "compressed": recipe.compress.enabled and recipe.task != "text"}
    return [r for r in ("teacher", "student", "scratch", "compressed") if made.get(r, True)]


def exported_roles(recipe: Recipe) -> list[str]:
    """The roles the export stage exports: made by the run, with targets (image and text runs)."""
    return [r for r in made_roles(recipe) if recipe.export.targets.get(r)]


def export_inputs(ctx: Context) -> dict[str, Any]:
    stage_of = {"student": "distill", "compressed": "compress"}
    export = hashed_export_section(ctx.recipe)
    models = {r: ctx.hashes.get(stage_of.get(r, r)) for r in exported_roles(ctx.recipe)}
    return {**_data_inputs(ctx), "models": models, "export": export,
            "int8_reduce_range": int8_reduce_range(ctx, export["int8_reduce_range"]),
            **_qat_inputs(ctx)}


def qat_may_run(recipe: Recipe) -> bool:
    """Whether quantization-aware distillation may run for a role of the run (edgekd.compress.qat_fallback.decide):
    an int8_qat target, or an int8_static one unless export.qat.enabled is false; ONNX only."""
    cfg = recipe.export
    return "onnx" in cfg.formats and any(
        "int8_qat" in cfg.targets[r] or (cfg.qat.enabled is not False and "int8_static" in cfg.targets[r])
        for r in exported_roles(recipe))


def export_fields_read(recipe: Recipe) -> dict[str, bool]:
    """Each export field (dotted: `int4.block_size`, `targets.scratch`) and whether the run's export reads it,
    from its formats and its made roles' targets (edgekd.export.formats, edgekd.exporter, edgekd.text.export,
    edgekd.compress.qat_fallback). A field this does not name counts as read."""
    cfg, made = recipe.export, made_roles(recipe)
    targets = [set(cfg.targets.get(r) or ()) for r in made]
    precisions = set().union(*targets)
    onnx, qat, int4 = "onnx" in cfg.formats, qat_may_run(recipe), "int4" in precisions
    calibrated = "int8_static" in precisions or qat  # static INT8 (any format) and QAT's observers
    ptq_onnx = onnx and bool(precisions & {"int8_static", "int8_dynamic"})
    qat_decides = onnx and any("int8_static" in t and "int8_qat" not in t for t in targets)  # as decide() does
    return {"formats": True, "opset": onnx,  # TFLite converts without an opset
            **{f"targets.{role}": role in made for role in cfg.targets},
            "calibration_samples": calibrated, "calibration_method": onnx and calibrated,
            "calibration_percentile": onnx and calibrated and cfg.calibration_method == "percentile",
            # QAT's artifact and the text exporter have no mixed-precision fallback
            "mixed_precision_fallback": ptq_onnx and recipe.task != "text", "int8_reduce_range": ptq_onnx or qat,
            "qat.enabled": qat_decides, "qat.max_int8_loss": qat_decides and cfg.qat.enabled == "auto",
            "qat.epochs": qat, "qat.lr": qat,
            "int4.block_size": onnx and int4, "int4.accuracy_level": onnx and int4,
            "int4.tflite_block_size": "tflite" in cfg.formats and int4,
            # the FP32 file made only for int4 targets is dropped: its parity decides nothing
            "parity.min_agreement": bool(precisions - {"int4"}), "parity.min_agreement_int4": int4}


def hashed_export_section(recipe: Recipe) -> dict[str, Any]:
    """The export section as the export stage's hash takes it: a field the run does not read holds its default
    (for the recipe's task), so changing it re-exports nothing, and a run whose unread fields are at their
    defaults keeps the hash it had before fields were told apart."""
    section = recipe.section("export")["export"]
    default = Recipe(task=recipe.task).section("export")["export"]
    for name, read in export_fields_read(recipe).items():
        if not read:
            _put(section, name, _get(default, name))
    return section


def _get(section: dict[str, Any], name: str) -> Any:
    """The value of the dotted field `name` of a dumped section."""
    for part in name.split("."):
        section = section[part]
    return section


def _put(section: dict[str, Any], name: str, value: Any) -> None:
    """Set the dotted field `name` of a dumped section."""
    *parents, key = name.split(".")
    for part in parents:
        section = section[part]
    section[key] = value


def _qat_inputs(ctx: Context) -> dict[str, Any]:
    """What quantization-aware distillation reads beyond the export section, when it may run for a role
    (edgekd.compress.qat_fallback.decide): the response loss, training settings and transfer set of distill, the
    checkpoints it learns from, and for a compressed model its recovery. Without them, a run exporting only the
    teacher kept its int8_qat artifact when those changed. Nothing when QAT cannot run (the hash stays)."""
    if not qat_may_run(ctx.recipe):
        return {}
    distill = ctx.recipe.section("distill")["distill"]
    reads = {k: distill[k] for k in ("loss", "train", "transfer_set", "strategy", "blackbox")}
    if "compressed" in exported_roles(ctx.recipe):
        reads["compress"] = ctx.recipe.section("compress")["compress"]
    return {"qat": {**reads, "checkpoints": {s: ctx.hashes.get(s) for s in ("teacher", "distill")},
                    **_blackbox_inputs(ctx)}}


def int8_reduce_range(ctx: Context, setting: str | bool | None = None) -> bool:
    """export.int8_reduce_range (or `setting`: the value the export hash holds) resolved for the recipe's target
    device, for the export stage's hash: "auto" decides per target CPU, so a recipe moved to a board with another
    CPU re-exports on the right grid."""
    from edgekd.compress.isa import choose_reduce_range, recipe_targets

    setting = ctx.recipe.export.int8_reduce_range if setting is None else setting
    return choose_reduce_range(setting, recipe_targets(ctx.recipe))["reduce_range"]


def export_options(ctx: Context, calibration: np.ndarray | None = None):
    """The recipe's export settings; `calibration` defaults to export.calibration_samples training inputs."""
    from edgekd.compress.isa import recipe_targets
    from edgekd.export.formats import ExportOptions

    cfg = ctx.recipe.export
    if calibration is None:
        x = ctx.splits.x_train
        calibration = x[np.random.default_rng(ctx.recipe.seed).permutation(len(x))[: cfg.calibration_samples]]
    return ExportOptions(opset=cfg.opset, calibration=calibration,
                         int4_block_size=cfg.int4.block_size, int4_accuracy_level=cfg.int4.accuracy_level,
                         tflite_int4_block_size=cfg.int4.tflite_block_size, calibration_method=cfg.calibration_method,
                         calibration_percentile=cfg.calibration_percentile,
                         mixed_precision_fallback=cfg.mixed_precision_fallback,
                         int8_reduce_range=cfg.int8_reduce_range, int8_targets=recipe_targets(ctx.recipe))


def _lineage(checkpoint: Path) -> dict[str, Any]:
    """Generation, and for a compressed model the source model and its compression steps, in order."""
    from edgekd.checkpoints import read_checkpoint

    meta = read_checkpoint(checkpoint).get("meta", {})
    extra = {"source": meta["architecture"], "steps": meta["steps"]} if meta.get("steps") else {}
    return {"generation": int(meta.get("generation", 0) or 0), **extra}


def _check_pruned_graphs(ctx: Context, artifacts: list) -> None:
    """A pruned model's exported ONNX must hold as many weights as the pruned model (BatchNorm folds into the
    convolutions, so its parameters are left out of the comparison): pruning that did not reach the graph
    would otherwise pass parity and be reported as smaller."""
    from edgekd.errors import ArtifactError
    from edgekd.export.onnx import onnx_parameter_count

    for artifact in artifacts:
        if artifact.role != "compressed" or artifact.format != "onnx" or artifact.precision != "fp32":
            continue
        model = ctx.trained("compressed")
        expected = sum(p.numel() for name, p in model.named_parameters()
                       if not _is_batch_norm(model, name))
        exported = onnx_parameter_count(artifact.path)
        if abs(exported - expected) > 0.02 * expected + 256:
            raise ArtifactError(f"{artifact.name} holds {exported:,} weights but the pruned model has {expected:,}",
                                why="the exported graph does not have the pruned shapes",
                                fix="report this with the recipe: it is a bug in pruning or export")
        ctx.reporter.note(f"{artifact.name}: {exported:,} weights in the graph for {expected:,} in the pruned model")


def _is_batch_norm(model, parameter_name: str) -> bool:
    from torch import nn

    module = model.get_submodule(parameter_name.rsplit(".", 1)[0]) if "." in parameter_name else model
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def _qat_artifacts(ctx: Context, role: str, model, made: list, options, lineage: dict[str, Any]) -> list:
    """The role's `<role>-onnx-int8_qat` artifact when export.qat asks for quantization-aware distillation
    (edgekd.compress.qat_fallback); otherwise none."""
    from functools import partial

    from edgekd.compress.qat_fallback import decide, qat_artifact, qat_teacher, validation_accuracies

    decision = decide(ctx.recipe, role, made, partial(validation_accuracies, model=model, splits=ctx.splits))
    if not decision.run:
        return []
    teacher = qat_teacher(ctx.recipe, ctx.splits, role, model, ctx.trained,
                          lambda of: sha256_file(ctx.rundir.checkpoints / f"{of}.pt"))
    return [qat_artifact(ctx.recipe, ctx.splits, role=role, model=model, teacher=teacher, decision=decision,
                         out_root=ctx.rundir.artifacts, options=options, lineage=lineage, reporter=ctx.reporter)]


def export_run(ctx: Context) -> tuple[list[Path], dict[str, Any]]:
    from edgekd.exporter import export_model, floor_artifact

    cfg, s = ctx.recipe.export, ctx.splits
    options = export_options(ctx)
    artifacts = []
    for role in exported_roles(ctx.recipe):
        checkpoint = ctx.rundir.checkpoints / f"{role}.pt"
        lineage = {"run": ctx.recipe.name, "checkpoint": str(checkpoint.relative_to(ctx.rundir.root)),
                   "checkpoint_sha256": sha256_file(checkpoint), **_lineage(checkpoint)}
        model = ctx.trained(role)
        made = export_model(
            model, role=role, formats=list(cfg.formats), precisions=[p for p in cfg.targets[role] if p != "int8_qat"],
            out_root=ctx.rundir.artifacts, in_shape=s.input_shape, x_test=s.x_test, y_test=s.y_test,
            x_select=s.x_val, num_classes=s.num_classes, options=options, min_agreement=cfg.parity.min_agreement,
            min_agreement_int4=cfg.parity.min_agreement_int4, lineage=lineage, reporter=ctx.reporter)
        artifacts += made + _qat_artifacts(ctx, role, model, made, options, lineage)
    _check_pruned_graphs(ctx, artifacts)
    artifacts += [floor_artifact(ctx.rundir.artifacts, fmt, s.input_shape, options, run=ctx.recipe.name)
                  for fmt in cfg.formats]
    write_test_split(ctx)  # what `edgekd bench` scores the run's files with on a device, bench stage or not
    return export_outcome(ctx, artifacts)


def export_outcome(ctx: Context, artifacts: list) -> tuple[list[Path], dict[str, Any]]:
    """An export stage's recorded outputs (each model file and its artifact.json) and summary, once the
    folders of artifacts no longer asked for are gone."""
    remove_stale_artifacts(ctx, artifacts)
    failed = [a.name for a in artifacts if a.parity is not None and not a.parity.passed]
    outputs = [p for a in artifacts for p in (a.path, a.path.parent / "artifact.json")]
    return outputs, {"artifacts": [a.name for a in artifacts], "failed_parity": failed}


# -- bench ---------------------------------------------------------------------------------

def bench_inputs(ctx: Context) -> dict[str, Any]:
    """The artifacts' files and inputs, the bench settings and the device's profile as resolved
    (devices/NAME.yaml): bench.device is only a name, and results measured with a profile's old threads, cpus
    or address must not be reused. The files, not their records: a re-export of the same models writes the same
    files and new records (a creation time, the seconds it took), and measuring them again tells nothing new."""
    from dataclasses import asdict

    from edgekd.devices.profiles import find_profile

    artifacts = {a.name: {"sha256": a.sha256, "inputs": a.inputs, "text_input": a.text_input}
                 for a in run_artifacts(ctx)}
    return {"artifacts": artifacts, "data": _data_inputs(ctx), "bench": ctx.recipe.section("bench")["bench"],
            "device": asdict(find_profile(ctx.recipe.bench.device))}


def bench_run(ctx: Context) -> tuple[list[Path], dict[str, Any]]:
    return bench_artifacts(ctx, benched_artifacts(ctx), input_arrays_for_bench(ctx, ctx.recipe.bench.batch_size),
                           write_test_split(ctx))


def benched_artifacts(ctx: Context) -> list:
    """The run's artifacts its bench stage times: all, without the floor graphs when bench.floor is off."""
    return [a for a in run_artifacts(ctx) if ctx.recipe.bench.floor or a.role != "floor"]


def run_artifacts(ctx: Context) -> list:
    """The artifact records the run's export stage made, in name order."""
    from edgekd.export.artifact import Artifact

    return [Artifact.load(p) for p in ctx.rundir.recorded_outputs("export", "artifact.json")]


def remove_stale_artifacts(ctx: Context, current: list) -> None:
    """Delete artifact folders an earlier export left (a precision or role since dropped from the recipe, or one
    an interrupted export had begun, without its artifact.json), so the folder holds what the manifest says:
    `edgekd bench <run>/artifacts/*` would stop at a half-made one. Bench and report read only the recorded
    ones either way."""
    import shutil

    keep = {a.path.parent.resolve() for a in current}
    for folder in ctx.rundir.artifacts.iterdir():
        if folder.is_dir() and not folder.is_symlink() and folder.resolve() not in keep:
            shutil.rmtree(folder)


# `edgekd run` has no --resume: its bench stage measures every artifact again, so all rounds stay side by side
# (the report pairs them round by round).
RUN_BENCH_AGAIN = "after fixing, run the recipe again: its bench stage measures every artifact again"


def bench_artifacts(ctx: Context, artifacts: list, inputs: Path,
                    eval_data: tuple[Path, Path]) -> tuple[list[Path], dict[str, Any]]:
    """Benchmark `artifacts` on the recipe's device with its bench settings, replacing the run's old results."""
    from edgekd.bench.harness import BenchSettings, bench

    b = ctx.recipe.bench
    settings = BenchSettings(threads=b.threads, batch_size=b.batch_size, warmup_runs=b.warmup_runs,
                             min_runs=b.min_runs, min_seconds=b.min_seconds, max_seconds=b.max_seconds,
                             rounds=b.rounds, eval_samples=b.eval_samples)
    from edgekd.bench.history import check_usable, record

    history = ctx.recipe.output_dir / "history.sqlite"
    check_usable(history)  # before measuring: a damaged history was found after every artifact was measured
    _remove_old_results(ctx.rundir.results)
    results = bench(artifacts, device=b.device, settings=settings, inputs=inputs, results_dir=ctx.rundir.results,
                    eval_data=eval_data, reporter=ctx.reporter, rerun_hint=RUN_BENCH_AGAIN)
    # Recorded once every artifact is measured, not as each one finishes: a run stopped midway measures them all
    # again when resumed, so what it had recorded would stay in the history as a half session beside the whole.
    record(results, history)
    return [r.saved_path for r in results], {"results": len(results)}


def _remove_old_results(results: Path) -> None:
    """Delete the run's earlier bench results; a folder under a result's name is refused before any measuring
    (unlink raised IsADirectoryError, an internal error), as atomic_path refuses one where it writes a file."""
    from edgekd.errors import OutputDirError

    for old in results.glob("bench-*.json"):
        if old.is_dir() and not old.is_symlink():
            raise OutputDirError(f"cannot write {old}: a folder of that name is in the way",
                                 why="the bench stage writes its result there, and a file cannot replace a folder",
                                 fix=f"remove or rename the folder {old}, then run the recipe again")
        old.unlink()


# -- report --------------------------------------------------------------------------------

def report_inputs(ctx: Context) -> dict[str, Any]:
    """Every stage whose record the report reads: compress too, whose accuracy steps it shows even when the
    compressed model is not exported (then no export or bench change would rerun it); and the pages it writes,
    so a run reported before a page existed (report.md) writes it on its next run instead of keeping the report
    it has until some other input changes."""
    from edgekd.bench.report import HTML_NAME, MARKDOWN_NAME

    return {**{k: ctx.hashes.get(k) for k in ("teacher", "distill", "scratch", "compress", "export", "bench")},
            "pages": [HTML_NAME, MARKDOWN_NAME]}


def report_run(ctx: Context) -> tuple[list[Path], dict[str, Any]]:
    from edgekd.bench.report import build_summary, write_pages

    manifest = ctx.rundir.load_manifest()["stages"]
    metrics = {role: manifest.get(stage, {}).get("metrics") for role, stage in
               (("teacher", "teacher"), ("student", "distill"), ("scratch", "scratch"), ("compressed", "compress"))}
    summary = build_summary(ctx.rundir, recipe=ctx.recipe.model_dump(mode="json"), model_metrics=metrics,
                            class_names=ctx.splits.class_names)
    summary_path = atomic_write_json(ctx.rundir.results / "summary.json", summary)
    return [summary_path, *write_pages(summary, ctx.rundir)], {}
