"""The stages of a run. Each has an `*_inputs` function (what its hash covers) and a `*_run` function
that does the work and returns (output files, extra manifest fields such as metrics)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekd.pipeline import Context, input_arrays_for_bench, write_test_split
from edgekd.rundir import atomic_write_json, sha256_file


def _data_inputs(ctx: Context) -> dict[str, Any]:
    return {"data": ctx.recipe.section("data")["data"], "data_fingerprint": ctx.data_fingerprint}


def _evaluate(model, ctx: Context) -> dict[str, Any]:
    from edgekd.distill.trainer import accuracy, predict_logits
    from edgekd.export.verify import per_class_accuracy
    from edgekd.models import count_parameters

    s = ctx.splits
    logits = predict_logits(model, s.x_test)
    return {"test_accuracy": accuracy(logits, s.y_test),
            "val_accuracy": accuracy(predict_logits(model, s.x_val), s.y_val),
            "per_class_accuracy": per_class_accuracy(logits, s.y_test, s.num_classes),
            "parameters": count_parameters(model)}


def _save(model, ctx: Context, role: str, metrics: dict[str, Any], **meta: Any) -> Path:
    from edgekd.checkpoints import save_checkpoint

    data = ctx.recipe.data
    data_meta = {"name": data.name, "seed": data.seed, "val_fraction": data.val_fraction,
                 "test_fraction": data.test_fraction, "label_fraction": data.label_fraction}
    return save_checkpoint(model, ctx.rundir.checkpoints / f"{role}.pt", role=role, run=ctx.recipe.name,
                           data=data_meta, metrics={k: v for k, v in metrics.items() if k != "per_class_accuracy"},
                           **meta)


# -- teacher -------------------------------------------------------------------------------

def teacher_inputs(ctx: Context) -> dict[str, Any]:
    checkpoint = ctx.recipe.teacher.checkpoint
    return {**_data_inputs(ctx), "teacher": ctx.recipe.section("teacher")["teacher"], "seed": ctx.recipe.seed,
            "checkpoint_sha256": sha256_file(checkpoint) if checkpoint and Path(checkpoint).is_file() else None}


def teacher_run(ctx: Context) -> tuple[list[Path], dict[str, Any]]:
    """Train the teacher on the full labelled training split, or load the recipe's checkpoint."""
    from edgekd.checkpoints import load_weights
    from edgekd.distill.losses import LOSSES
    from edgekd.distill.trainer import fit, steps_for

    ctx.preflight()
    cfg, s = ctx.recipe.teacher, ctx.splits
    model = ctx.model("teacher")
    if cfg.checkpoint is not None:
        load_weights(model, Path(cfg.checkpoint), role="teacher")
        source = {"source": "checkpoint", "checkpoint": str(cfg.checkpoint)}
        train_seconds = 0.0
    else:
        t = cfg.train
        result = fit(model, s.x_train, s.y_train, loss_fn=LOSSES["ce"],
                     steps=steps_for(len(s.x_train), t.batch_size, t.epochs), batch_size=t.batch_size, lr=t.lr,
                     weight_decay=t.weight_decay, seed=ctx.recipe.seed, val=(s.x_val, s.y_val),
                     reporter=ctx.reporter, description="train teacher")
        source = {"source": "trained", "steps": result.steps}
        train_seconds = result.seconds
    metrics = {**_evaluate(model, ctx), "train_seconds": round(train_seconds, 2), **source}
    path = _save(model, ctx, "teacher", metrics, generation=0)
    return [path], {"metrics": metrics}


# -- distilled student ---------------------------------------------------------------------

def _transfer_set(ctx: Context) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs, targets with -1 where unlabelled, indices into the training split)."""
    from edgekd.distill.trainer import masked_targets

    s = ctx.splits
    if ctx.recipe.distill.transfer_set == "train_split":
        idx = np.arange(len(s.x_train))
    else:
        idx = np.flatnonzero(s.labelled)
    return s.x_train[idx], masked_targets(s.y_train, s.labelled)[idx], idx


def _budget(ctx: Context) -> int:
    """Optimizer steps shared by the distilled and the scratch student."""
    from edgekd.distill.trainer import steps_for

    t = ctx.recipe.distill.train
    return steps_for(len(_transfer_set(ctx)[0]), t.batch_size, t.epochs)


def distill_inputs(ctx: Context) -> dict[str, Any]:
    return {**_data_inputs(ctx), "teacher": ctx.hashes["teacher"], "seed": ctx.recipe.seed,
            **ctx.recipe.section("student", "distill")}


def distill_run(ctx: Context) -> tuple[list[Path], dict[str, Any]]:
    """Distil the student from the teacher's logits on the transfer set (computed once)."""
    from edgekd.distill.losses import LOSSES
    from edgekd.distill.trainer import fit, predict_logits

    ctx.preflight()
    d = ctx.recipe.distill
    x, target, _ = _transfer_set(ctx)
    teacher_logits = predict_logits(ctx.trained("teacher"), x)
    student = ctx.model("student")
    result = fit(student, x, target, loss_fn=LOSSES[d.loss.name], teacher_logits=teacher_logits,
                 loss_params={"temperature": d.loss.temperature, "alpha": d.loss.alpha}, steps=_budget(ctx),
                 batch_size=d.train.batch_size, lr=d.train.lr, weight_decay=d.train.weight_decay,
                 seed=ctx.recipe.seed, val=(ctx.splits.x_val, ctx.splits.y_val), reporter=ctx.reporter,
                 description="distill student")
    metrics = {**_evaluate(student, ctx), "train_seconds": round(result.seconds, 2), "steps": result.steps,
               "transfer_samples": int(len(x)), "labelled_samples": int((target >= 0).sum())}
    path = _save(student, ctx, "student", metrics, generation=1,
                 teacher_checkpoint_sha256=sha256_file(ctx.rundir.checkpoints / "teacher.pt"),
                 loss=d.loss.model_dump())
    return [path], {"metrics": metrics}


# -- scratch baseline ----------------------------------------------------------------------

def scratch_inputs(ctx: Context) -> dict[str, Any]:
    return {**_data_inputs(ctx), "seed": ctx.recipe.seed, **ctx.recipe.section("student", "distill")}


def scratch_run(ctx: Context) -> tuple[list[Path], dict[str, Any]]:
    """The student's architecture trained on the labelled samples alone, with the same steps and seed."""
    from edgekd.distill.losses import LOSSES
    from edgekd.distill.trainer import fit

    ctx.preflight()
    s, t = ctx.splits, ctx.recipe.distill.train
    x, y = s.x_train[s.labelled], s.y_train[s.labelled]
    model = ctx.model("student")
    result = fit(model, x, y, loss_fn=LOSSES["ce"], steps=_budget(ctx), batch_size=t.batch_size, lr=t.lr,
                 weight_decay=t.weight_decay, seed=ctx.recipe.seed, val=(s.x_val, s.y_val),
                 reporter=ctx.reporter, description="train scratch baseline")
    metrics = {**_evaluate(model, ctx), "train_seconds": round(result.seconds, 2), "steps": result.steps,
               "labelled_samples": int(len(x))}
    path = _save(model, ctx, "scratch", metrics, generation=0)
    return [path], {"metrics": metrics}


# -- export --------------------------------------------------------------------------------

def _roles(ctx: Context) -> list[str]:
    return [r for r in ("teacher", "student", "scratch")
            if ctx.recipe.export.targets.get(r) and (r != "scratch" or ctx.recipe.scratch.enabled)]


def export_inputs(ctx: Context) -> dict[str, Any]:
    return {**_data_inputs(ctx), "models": {r: ctx.hashes.get(r if r != "student" else "distill") for r in _roles(ctx)},
            "export": ctx.recipe.section("export")["export"]}


def export_options(ctx: Context):
    from edgekd.export.formats import ExportOptions

    cfg, s = ctx.recipe.export, ctx.splits
    rng = np.random.default_rng(ctx.recipe.seed)
    return ExportOptions(opset=cfg.opset, calibration=s.x_train[rng.permutation(len(s.x_train))[: cfg.calibration_samples]],
                         int4_block_size=cfg.int4.block_size, int4_accuracy_level=cfg.int4.accuracy_level,
                         tflite_int4_block_size=cfg.int4.tflite_block_size)


def export_run(ctx: Context) -> tuple[list[Path], dict[str, Any]]:
    from edgekd.exporter import export_model, floor_artifact

    cfg, s = ctx.recipe.export, ctx.splits
    options = export_options(ctx)
    artifacts = []
    for role in _roles(ctx):
        checkpoint = ctx.rundir.checkpoints / f"{role}.pt"
        artifacts += export_model(
            ctx.trained(role), role=role, formats=list(cfg.formats), precisions=list(cfg.targets[role]),
            out_root=ctx.rundir.artifacts, in_shape=s.input_shape, x_test=s.x_test, y_test=s.y_test,
            num_classes=s.num_classes, options=options, min_agreement=cfg.parity.min_agreement,
            min_agreement_int4=cfg.parity.min_agreement_int4,
            lineage={"run": ctx.recipe.name, "checkpoint": str(checkpoint.relative_to(ctx.rundir.root)),
                     "checkpoint_sha256": sha256_file(checkpoint), "generation": 0 if role != "student" else 1},
            reporter=ctx.reporter)
    artifacts += [floor_artifact(ctx.rundir.artifacts, fmt, s.input_shape, options) for fmt in cfg.formats]
    failed = [a.name for a in artifacts if a.parity is not None and not a.parity.passed]
    outputs = [p for a in artifacts for p in (a.path, a.path.parent / "artifact.json")]
    return outputs, {"artifacts": [a.name for a in artifacts], "failed_parity": failed}


# -- bench ---------------------------------------------------------------------------------

def bench_inputs(ctx: Context) -> dict[str, Any]:
    return {"export": ctx.hashes["export"], "bench": ctx.recipe.section("bench")["bench"]}


def bench_run(ctx: Context) -> tuple[list[Path], dict[str, Any]]:
    from edgekd.bench.harness import BenchSettings, bench
    from edgekd.export.artifact import Artifact

    b = ctx.recipe.bench
    artifacts = [Artifact.load(p) for p in sorted(ctx.rundir.artifacts.glob("*/artifact.json"))]
    inputs = input_arrays_for_bench(ctx, b.batch_size)
    eval_data = write_test_split(ctx)
    settings = BenchSettings(threads=b.threads, batch_size=b.batch_size, warmup_runs=b.warmup_runs,
                             min_runs=b.min_runs, min_seconds=b.min_seconds, max_seconds=b.max_seconds,
                             rounds=b.rounds)
    if not b.floor:
        artifacts = [a for a in artifacts if a.role != "floor"]
    for old in ctx.rundir.results.glob("bench-*.json"):
        old.unlink()
    results = bench(artifacts, device=b.device, settings=settings, inputs=inputs, results_dir=ctx.rundir.results,
                    history=ctx.recipe.output_dir / "history.sqlite", eval_data=eval_data,
                    reporter=ctx.reporter)
    return [r.saved_path for r in results], {"results": len(results)}


# -- report --------------------------------------------------------------------------------

def report_inputs(ctx: Context) -> dict[str, Any]:
    return {k: ctx.hashes.get(k) for k in ("teacher", "distill", "scratch", "export", "bench")}


def report_run(ctx: Context) -> tuple[list[Path], dict[str, Any]]:
    from edgekd.bench.report import build_summary, write_html

    manifest = ctx.rundir.load_manifest()["stages"]
    metrics = {role: manifest.get(stage, {}).get("metrics") for role, stage in
               (("teacher", "teacher"), ("student", "distill"), ("scratch", "scratch"))}
    summary = build_summary(ctx.rundir, recipe=ctx.recipe.model_dump(mode="json"), model_metrics=metrics,
                            class_names=ctx.splits.class_names)
    summary_path = atomic_write_json(ctx.rundir.results / "summary.json", summary)
    html = write_html(summary, ctx.rundir.report / "index.html")
    return [summary_path, html], {}
