"""Check a recipe's distillation plan before any training, so a mistake fails in seconds, not after the
teacher has trained: layer paths and their shapes, pruning (on an untrained copy), black-box output files, and the
teacher's generation."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekd.recipe import Recipe

if TYPE_CHECKING:
    from edgekd.data import Splits

_OUTPUT_FILES = (".npy", ".npz", ".jsonl")


def check_plan(recipe: Recipe, splits: "Splits") -> None:
    """Raise the error the distill stage would raise later, for everything knowable up front."""
    from edgekd.distill.api import new_model
    from edgekd.distill.features import check_logits_terms, match_features, resolve
    from edgekd.distill.losses import needs_same_shape
    from edgekd.distill.objectives import LOGITS

    d = recipe.distill
    built: dict[str, Any] = {}

    def model(role: str):
        """A fresh model of `role`, built once for every check that needs it."""
        if role not in built:
            built[role] = new_model(recipe, splits, role)
        return built[role]

    student = model("student")
    terms = [(f.loss, f.student, f.teacher or LOGITS) for f in d.features]  # no teacher layer: its logits
    layers = [(loss, s, t) for loss, s, t in terms if LOGITS not in (s, t)]
    if d.strategy == "progressive":  # hint stages
        layers += [("hint", *p) for p in d.progressive.pairs]
    # born-again: each generation is taught by the previous one, a student, so teacher paths name its layers
    teacher_role = "student" if d.strategy == "self" else "teacher"
    if layers:
        match_features(model(teacher_role), student, [(s, t) for _, s, t in layers],
                       splits.input_shape, adapt=[needs_same_shape(loss) for loss, _, _ in layers])
    student_only = [s for _, s, t in terms if t == LOGITS and s != LOGITS]
    if d.strategy == "self" and d.self_distill.mode == "deep_supervision":
        student_only += d.self_distill.heads
    if student_only:
        resolve(student, student_only, role="student")
    teacher_only = [t for _, s, t in terms if s == LOGITS and t != LOGITS]
    if teacher_only and d.strategy != "blackbox":
        resolve(model(teacher_role), teacher_only, role="teacher")
    if any(LOGITS in (s, t) for _, s, t in terms) and d.strategy != "blackbox":
        check_logits_terms(terms, model(teacher_role), student, splits.input_shape)
    prune = recipe.compress.prune
    if recipe.compress.enabled and prune.skip:  # the compress stage resolves them after all the training
        resolve(model(recipe.compress.source), prune.skip, role="pruned")
    if recipe.compress.enabled:  # N:M without a group of M inputs, a budget out of reach: the architecture's
        from edgekd.compress.recovery import check_pruning

        check_pruning(model(recipe.compress.source), splits.input_shape, prune)
    if d.strategy == "blackbox":
        _check_blackbox_source(recipe, splits)
    _check_cache_topk(recipe, splits.num_classes)
    _check_lineage(recipe)


def _check_blackbox_source(recipe: Recipe, splits: "Splits") -> None:
    """Output files are read whole; a 'package.module:function' teacher is imported (a typo in its name failed
    only once the teacher, trained for the report, had finished)."""
    from edgekd.distill.blackbox import _import_function, load_teacher_outputs, names_a_function

    cfg = recipe.distill.blackbox
    if Path(cfg.source).suffix in _OUTPUT_FILES:
        load_teacher_outputs(cfg.source, num_samples=len(splits.x_train), num_classes=splits.num_classes,
                             kind=cfg.kind)
    elif names_a_function(cfg.source):
        _import_function(cfg.source)


def _check_cache_topk(recipe: Recipe, num_classes: int) -> None:
    """The cache keeps k of the data's classes: more was a ValueError from the cache after the teacher trained."""
    from edgekd.errors import RecipeError

    k = recipe.distill.cache_topk
    if recipe.task != "text" and k is not None and k > num_classes:
        raise RecipeError(f"distill.cache_topk: {k} is more than the data's {num_classes} classes",
                          why="the teacher cache keeps the k largest of each sample's class outputs",
                          fix=f"set distill.cache_topk to at most {num_classes}, or remove it to cache every class")


def _check_lineage(recipe: Recipe) -> None:
    from edgekd.distill.lineage import artifact_generation, check_teacher_generation, checkpoint_generation
    from edgekd.distill.strategies import uses_teacher

    d = recipe.distill
    if not uses_teacher(d):
        return
    if d.strategy == "ensemble":  # the members too: else checked only once the teacher had trained
        for member in d.ensemble.members:
            if member.checkpoint is not None and Path(member.checkpoint).is_file():
                check_teacher_generation(checkpoint_generation(member.checkpoint), source=str(member.checkpoint),
                                         allow=d.allow_generation)
    if d.strategy == "blackbox":
        generation, source = artifact_generation(d.blackbox.source), d.blackbox.source
    elif recipe.teacher.checkpoint is not None and Path(recipe.teacher.checkpoint).is_file():
        generation, source = checkpoint_generation(recipe.teacher.checkpoint), str(recipe.teacher.checkpoint)
    else:
        return
    check_teacher_generation(generation, source=str(source), allow=d.allow_generation)
