"""Runs a recipe stage by stage into its run directory, skipping stages that are already done.

teacher → distill → scratch → export → bench → report. Each stage's input hash covers its recipe
sections and the output hashes of the stages it reads, so changing a field reruns exactly the stages
it affects, and an interrupted run resumes from its last finished stage.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgekd import __version__
from edgekd.errors import OutputDirError, RecipeError
from edgekd.interrupts import raise_if_received
from edgekd.progress import Reporter, SilentReporter, usable_reporter
from edgekd.recipe import Recipe, dump_recipe
from edgekd.rng import kept_global_rngs
from edgekd.rundir import (RunDir, atomic_write, atomic_write_json, exclusive_folder, hash_obj, process_temp_dir,
                           read_json, remove_orphan_temp_files)

logger = logging.getLogger(__name__)

STAGE_NAMES = ("teacher", "distill", "scratch", "compress", "export", "bench", "report")


@dataclass
class Context:
    recipe: Recipe
    rundir: RunDir
    reporter: Reporter
    hashes: dict[str, str] = field(default_factory=dict)
    recheck: bool = False  # `--force all`: trial-export again though the run folder records a pass
    _preflight_done: bool = False

    @cached_property
    def splits(self):
        from edgekd.distill.api import load_splits

        return load_splits(self.recipe)

    @cached_property
    def text(self):
        """The text task's corpus, tokenizer and token ids (task: text)."""
        from edgekd.text.data import load_text_data

        return load_text_data(self.recipe, self.reporter)

    @cached_property
    def data_fingerprint(self) -> str:
        return self.splits.fingerprint()

    def model(self, role: str):
        """A fresh model of the recipe's teacher or student architecture, initialised from the recipe's seed
        (so its weights do not depend on what ran before it in this process)."""
        from edgekd.distill.api import new_model

        return new_model(self.recipe, self.splits, role)

    def trained(self, role: str):
        """The trained model of a role, rebuilt from its checkpoint (a pruned one gets its pruned shape first)."""
        from edgekd.checkpoints import load_weights, read_checkpoint
        from edgekd.models import with_recorded_pruning

        path = self.rundir.checkpoints / f"{role}.pt"
        meta = read_checkpoint(path).get("meta", {}) if role == "compressed" else {}
        model = self.model(meta.get("architecture", "teacher" if role == "teacher" else "student"))
        load_weights(with_recorded_pruning(model, self.splits.input_shape, meta), path, role=role)
        return model

    def preflight(self) -> None:
        """Check the distillation plan and trial-export both architectures before any training, so a wrong
        layer path or an unexportable model fails in seconds (a text run: its student, see text_trial).

        The trial exports take 10-25 s, and every resume of a run that trains would redo them: the run folder
        records that they passed (EXPORTABLE_PATH) for what decides it (`exportability_key`), and they are
        skipped while that is unchanged (and not `recheck`). The plan check is quick and reads files outside the
        run: always done."""
        if self._preflight_done or not is_writer():
            return
        from edgekd.export.formats import FORMATS, ExportOptions

        check_bench_threads(self.recipe)
        if self.recipe.task == "text":  # the student alone: the teacher is exported by optimum, never trained
            from edgekd.text.stages import text_trial
            checked, roles, export = text_trial(self)
        else:
            from edgekd.distill.plan import check_plan

            check_plan(self.recipe, self.splits)
            checked = exportability_key(self.recipe, self.splits.input_shape, self.splits.num_classes)
            roles = ("teacher", "student")

            def export(role: str, backend: Any, path: Path) -> None:
                backend.export_fp32(self.model(role), self.splits.input_shape, path,
                                    ExportOptions(opset=self.recipe.export.opset))
        key = hash_obj(checked)
        passed = self.rundir.root / EXPORTABLE_PATH
        if not self.recheck and _recorded_key(passed) == key:
            self._preflight_done = True
            return

        backends = [FORMATS[f]() for f in self.recipe.export.formats]
        for backend in backends:  # a missing optional extra fails here, before any training
            backend.check_available()
        task = self.reporter.task("check exportability", len(roles) * len(backends))
        with process_temp_dir("preflight") as tmp:  # one a SIGKILL left goes at the next
            for role in roles:
                for backend in backends:
                    export(role, backend, Path(tmp) / f"{role}{backend.suffix}")
                    task.advance(1)
        task.close()
        atomic_write_json(passed, {"passed": key, "checked": checked})
        self._preflight_done = True


def check_bench_threads(recipe: Recipe) -> None:
    """bench.threads past what the runner accepts on this machine (a local bench device runs here), refused
    before training rather than by the bench stage after it. A remote device's cores are known only there."""
    from edgekd.bench.runner import THREADS_PER_CORE
    from edgekd.devices.profiles import find_profile

    b = recipe.bench
    if not b.enabled or b.threads is None or find_profile(b.device).kind != "local":
        return
    cores = os.cpu_count() or 1
    if b.threads > THREADS_PER_CORE * cores:
        raise RecipeError(f"invalid recipe: bench.threads: {b.threads} is more than {THREADS_PER_CORE}x the {cores} "
                          f"cores of device '{b.device}' (this machine)",
                          why="the bench stage would refuse it after all the training: past the cores, threads "
                              "only contend for them",
                          fix=f"set bench.threads to at most {cores} (or up to {THREADS_PER_CORE * cores} to measure "
                              "oversubscription)")


# Where a run folder records that the trial exports of its architectures passed (Context.preflight).
EXPORTABLE_PATH = "exportable.json"


def exportability_key(recipe: Recipe, input_shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    """What decides whether the trial exports pass: the two architectures (family and parameters, with the input
    shape and the classes they are built for, and the seed of their weights), the formats and opset they are
    exported to, and the versions of the converters and of edgekd. Anything else of a recipe (training,
    distillation, targets, bench) does not reach them."""
    from edgekd.exporter import runtime_versions

    formats = list(recipe.export.formats)
    return {"teacher": recipe.section("teacher")["teacher"]["model"],
            "student": recipe.section("student")["student"]["model"], "seed": recipe.seed,
            "input_shape": list(input_shape), "num_classes": num_classes, "formats": formats,
            "opset": recipe.export.opset, "versions": {f: runtime_versions(f) for f in formats},
            "edgekd": __version__}


def _recorded_key(path: Path) -> str | None:
    """The key whose trial exports passed in this run folder; None when none did or the record is unreadable
    (then the check runs again: it is a cache, never a reason to stop)."""
    try:
        record = read_json(path)
    except (OSError, ValueError):
        return None
    key = record.get("passed") if isinstance(record, dict) else None
    return key if isinstance(key, str) else None


@dataclass(frozen=True)
class Stage:
    name: str
    inputs: Callable[[Context], dict[str, Any]]
    run: Callable[[Context], tuple[list[Path], dict[str, Any]]]
    enabled: Callable[[Context], bool] = lambda ctx: True


@dataclass
class RunResult:
    """What a run produced: the run directory, its artifact records and bench results."""

    rundir: RunDir
    recipe: Recipe
    stages: dict[str, str] = field(default_factory=dict)  # stage -> "ran" | "skipped" | "disabled"
    rank: int = 0  # under torchrun: ranks other than 0 return after training, before rank 0 exports and reports

    @property
    def artifacts(self):
        from edgekd.export.artifact import Artifact

        return [Artifact.load(p) for p in self.rundir.recorded_outputs("export", "artifact.json")]

    @property
    def results(self):
        from edgekd.bench.result import BenchResult

        return [BenchResult.load(p) for p in self.rundir.recorded_outputs("bench", "bench-*.json")]

    @property
    def summary_path(self) -> Path:
        return self.rundir.results / "summary.json"

    @property
    def report_path(self) -> Path:
        from edgekd.bench.report import HTML_NAME

        return self.rundir.report / HTML_NAME


def _stages(recipe: Recipe) -> list[Stage]:
    if recipe.task == "text":
        from edgekd.text import stages as t

        return [
            Stage("teacher", t.teacher_inputs, t.teacher_run),
            Stage("distill", t.distill_inputs, t.distill_run),
            Stage("scratch", t.scratch_inputs, t.scratch_run, enabled=lambda ctx: ctx.recipe.scratch.enabled),
            Stage("export", t.export_inputs, t.export_run),
            Stage("bench", _bench_inputs, t.bench_run, enabled=lambda ctx: ctx.recipe.bench.enabled),
            Stage("report", _report_inputs, t.report_run),
        ]
    from edgekd import stages as s

    return [
        Stage("teacher", s.teacher_inputs, s.teacher_run),
        Stage("distill", s.distill_inputs, s.distill_run),
        Stage("scratch", s.scratch_inputs, s.scratch_run, enabled=lambda ctx: ctx.recipe.scratch.enabled),
        Stage("compress", s.compress_inputs, s.compress_run, enabled=lambda ctx: ctx.recipe.compress.enabled),
        Stage("export", s.export_inputs, s.export_run),
        Stage("bench", s.bench_inputs, s.bench_run, enabled=lambda ctx: ctx.recipe.bench.enabled),
        Stage("report", s.report_inputs, s.report_run),
    ]


def _stages_to_force(force: Any) -> set[str]:
    """`force` as a set of names: a string alone was read letter by letter ('unknown stage(s) to force: e, o, p')."""
    if isinstance(force, str):
        raise RecipeError(f"force must be a set of stage names, got the string {force!r}",
                          why="a string would be read letter by letter",
                          fix=f"give force={{{force!r}}}; stages: {', '.join(STAGE_NAMES)}, or 'all'")
    try:
        names = set(force or ())
    except TypeError:
        names = None
    if names is None or not all(isinstance(name, str) for name in names):
        raise RecipeError(f"force must be a set of stage names, got {type(force).__name__} {repr(force)[:60]}",
                          fix=f"e.g. force={{'export'}}; stages: {', '.join(STAGE_NAMES)}, or 'all'")
    return names


@kept_global_rngs()  # training seeds them; the caller's own draws must not repeat the recipe's
def run(recipe: Recipe, *, force: set[str] | None = None, reporter: Reporter | None = None,
        output_dir: Path | None = None) -> RunResult:
    """Execute every stage of `recipe` (resumable); `force` names stages to rerun ('all' for every one)."""
    force = _stages_to_force(force)
    reporter = usable_reporter(reporter)
    unknown = force - set(STAGE_NAMES) - {"all"}
    if unknown:
        raise RecipeError(f"unknown stage(s) to force: {', '.join(sorted(unknown))}",
                          why=f"stages: {', '.join(STAGE_NAMES)}", fix="use one of those names, or 'all'")
    if output_dir is not None:
        if not isinstance(output_dir, (str, os.PathLike)):  # Path() would raise a bare TypeError
            raise OutputDirError(f"output_dir must be a folder's path, got {type(output_dir).__name__} "
                                 f"{repr(output_dir)[:60]}", fix="e.g. edgekd.run(recipe, output_dir='export')")
        recipe = recipe.model_copy(update={"output_dir": Path(output_dir)})
    rank, world = _join_distributed()
    reporter = reporter if rank == 0 else SilentReporter()
    rundir = RunDir(recipe.run_dir)
    with contextlib.ExitStack() as held:
        if rank == 0:  # the other ranks are this same run; they write nothing
            rundir.create()
            held.enter_context(exclusive_folder(
                rundir.root, what=f"the run folder {rundir.root}",
                fix="wait for that run to end (then run again: it resumes), or give this run another folder: "
                    "--output-dir DIR, or another `name:` in the recipe"))
        return _run_stages(recipe, rundir, force, reporter, rank, world)


def _run_stages(recipe: Recipe, rundir: RunDir, force: set[str], reporter: Reporter, rank: int,
                world: int) -> RunResult:
    """The body of `run`, while rank 0 holds the run folder's lock."""
    if rank == 0:
        for folder in (rundir.root, recipe.output_dir / "cache"):  # what a killed run was writing
            remove_orphan_temp_files(folder)
        problem = rundir.repair_manifest()
        if problem:
            reporter.note(f"[warning] {rundir.manifest_path}: {problem}")
        atomic_write(rundir.recipe_path, dump_recipe(recipe))
    ctx = Context(recipe=recipe, rundir=rundir, reporter=reporter, recheck="all" in force)
    result = RunResult(rundir=rundir, recipe=recipe, rank=rank)
    for stage in _stages(recipe):
        raise_if_received()  # a Ctrl-C some library swallowed still stops the run here
        if world > 1 and stage.name not in TRAINING_STAGES:
            _leave_distributed()  # training is over: rank 0 exports, benchmarks and reports alone
            if rank != 0:
                return result
            world = 1
        _barrier(world)  # every rank sees the manifest rank 0 left after the previous stage
        if not stage.enabled(ctx):
            if rank == 0:  # an earlier run's record (a bench, a scratch baseline) must not reach the report
                rundir.forget(stage.name)
            result.stages[stage.name] = "disabled"
            continue
        input_hash = hash_obj({"edgekd": __version__, **stage.inputs(ctx)})
        forced = "all" in force or stage.name in force
        done, damaged = (None, None) if forced else _done_record(rundir, stage.name, input_hash, rank)
        if done is not None:
            ctx.hashes[stage.name] = done["output_hash"]
            result.stages[stage.name] = "skipped"
            reporter.note(f"{stage.name}: up to date, skipped")
            continue
        if damaged:
            reporter.note(f"{stage.name}: {damaged}; running the stage again")
        started = time.perf_counter()
        outputs, extra = stage.run(ctx)
        seconds = time.perf_counter() - started
        if rank == 0:
            ctx.hashes[stage.name] = rundir.mark_done(stage.name, input_hash, outputs, seconds, **extra)
            reporter.note(f"{stage.name}: done in {seconds:.1f} s")
        if world > 1:  # every rank ran this training stage: the others take rank 0's output hash
            _barrier(world)
            ctx.hashes[stage.name] = rundir.stage_record(stage.name)["output_hash"]
        result.stages[stage.name] = "ran"
    return result


def _done_record(rundir: RunDir, stage: str, input_hash: str,
                 rank: int) -> tuple[dict[str, Any] | None, str | None]:
    """(the record of `stage` when it is done with these inputs: its own, or the one set aside while the recipe
    had the stage off, taken back into the manifest by rank 0, every rank deciding alike from the same files;
    why its own record of these inputs is not done: RunDir.done_record)."""
    record, damaged = rundir.done_record(stage, input_hash)
    if record is None and damaged is None:
        record = rundir.take_back(stage, input_hash, write=rank == 0)
    return record, damaged


def _bench_inputs(ctx: Context) -> dict[str, Any]:
    from edgekd.stages import bench_inputs

    return bench_inputs(ctx)


def _report_inputs(ctx: Context) -> dict[str, Any]:
    from edgekd.stages import report_inputs

    return report_inputs(ctx)


# Stages every rank of a torchrun job runs (rank 0 alone writes their files); the rest run on rank 0 only.
TRAINING_STAGES = ("teacher", "distill", "scratch")  # compress runs on rank 0 alone, like export


def _join_distributed() -> tuple[int, int]:
    """(rank, world size): join the torchrun job (gloo, CPU) when WORLD_SIZE > 1, else (0, 1).

    Every rank trains (the student under DistributedDataParallel); only rank 0 writes checkpoints,
    manifests and artifacts, and exports, benchmarks and reports. All ranks of one machine share the run
    directory; across machines it must be on a shared file system.
    """
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def _leave_distributed() -> None:
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def is_writer() -> bool:
    """False on ranks other than 0 of a distributed run: they train but leave files to rank 0."""
    from edgekd.distill.trainer import distributed_world

    return distributed_world()[0] == 0


def input_arrays_for_bench(ctx: Context, batch_size: int) -> Path:
    """The first `batch_size` test samples as .npy: what the runner feeds (real data, not random)."""
    from edgekd.rundir import atomic_save_array

    x = ctx.splits.x_test
    reps = -(-batch_size // len(x))
    batch = np.ascontiguousarray(np.concatenate([x] * reps)[:batch_size], dtype=np.float32)
    return atomic_save_array(ctx.rundir.data / f"bench_x_b{batch_size}.npy", batch)


def write_test_split(ctx: Context) -> tuple[Path, Path]:
    """The test split as .npy files (inputs, labels): pushed to devices to score artifacts there."""
    from edgekd.rundir import atomic_save_array

    return (atomic_save_array(ctx.rundir.data / "test_x.npy", ctx.splits.x_test.astype(np.float32)),
            atomic_save_array(ctx.rundir.data / "test_y.npy", ctx.splits.y_test.astype(np.int64)))
