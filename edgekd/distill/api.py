"""Distillation from Python, without a run directory: train a teacher, distil a student with any strategy,
train the scratch baseline. The pipeline's stages call the same functions and add checkpoints and manifests.

    outcome = edgekd.distill("kd_hint")                      # the public call (distill_student): all in one

    from edgekd.distill.api import distill, train_scratch, train_teacher
    recipe = edgekd.load_recipe("kd_hint")
    splits = load_splits(recipe)
    teacher = train_teacher(recipe, splits)
    outcome = distill(recipe, splits, teacher=teacher)      # DistillOutcome: student, steps, details
    scratch = train_scratch(recipe, splits)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from edgekd.progress import Reporter, SilentReporter
from edgekd.recipe import Recipe

if TYPE_CHECKING:
    from torch import nn

    from edgekd.data import Splits
    from edgekd.distill.strategies import DistillJob, DistillOutcome


def load_splits(recipe: Recipe) -> "Splits":
    from edgekd.data import load_data

    d = recipe.data
    return load_data(d.name, seed=d.seed, val_fraction=d.val_fraction, test_fraction=d.test_fraction,
                     label_fraction=d.label_fraction)


def new_model(recipe: Recipe, splits: "Splits", role: str, seed: int | None = None) -> "nn.Module":
    """A fresh teacher or student of the recipe, initialised from `seed` (default: the recipe's)."""
    from edgekd.distill.trainer import seed_everything
    from edgekd.errors import RecipeError
    from edgekd.models import create_model

    seed_everything(recipe.seed if seed is None else seed)
    section = "teacher" if role == "teacher" else "student"
    cfg = getattr(recipe, section).model
    try:
        return create_model(cfg.family, in_shape=splits.input_shape, num_classes=splits.num_classes, **cfg.params)
    except RecipeError as exc:  # a family's parameter check: say which recipe field it is about
        raise RecipeError(f"{section}.model.params: {exc.what}", why=exc.why, fix=exc.fix) from None


def transfer_set(recipe: Recipe, splits: "Splits") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs, targets with -1 where unlabelled, row indices into the training split)."""
    from edgekd.distill.trainer import masked_targets

    if recipe.distill.transfer_set == "train_split":
        rows = np.arange(len(splits.x_train))
    else:
        rows = np.flatnonzero(splits.labelled)
    return splits.x_train[rows], masked_targets(splits.y_train, splits.labelled)[rows], rows


def budget(recipe: Recipe, splits: "Splits") -> int:
    """Optimizer steps per trained student, shared by every strategy and the scratch baseline."""
    from edgekd.distill.trainer import steps_for

    t = recipe.distill.train
    return steps_for(len(transfer_set(recipe, splits)[0]), t.batch_size, t.epochs)


def teacher_labelled(recipe: Recipe, splits: "Splits") -> tuple[np.ndarray, np.ndarray]:
    """(inputs, labels) a teacher trains on: the whole training split, or with data.teacher_labels: students the
    students' labelled samples (the same mask, drawn with data.seed), so KD cannot pass on labels scratch lacks."""
    if recipe.data.teacher_subset:
        return splits.x_train[splits.labelled], splits.y_train[splits.labelled]
    return splits.x_train, splits.y_train


def train_classifier(model: "nn.Module", recipe: Recipe, splits: "Splits", *, seed: int, description: str,
                     reporter: Reporter | None = None, val: bool = True):
    """Train a teacher-like model on the labels of data.teacher_labels with the teacher's budget. The budget
    counts teacher.train.epochs over the whole training split either way, so a teacher on the students' labels
    takes as many steps as one on all of them and differs from it in the labels alone."""
    from edgekd.distill.losses import LOSSES
    from edgekd.distill.trainer import fit, steps_for

    t = recipe.teacher.train
    x, y = teacher_labelled(recipe, splits)
    return fit(model, x, y, loss_fn=LOSSES["ce"],
               steps=steps_for(len(splits.x_train), t.batch_size, t.epochs), batch_size=t.batch_size, lr=t.lr,
               weight_decay=t.weight_decay, seed=seed, val=(splits.x_val, splits.y_val) if val else None,
               reporter=reporter, description=description)


def train_teacher(recipe: Recipe, splits: "Splits", reporter: Reporter | None = None) -> "nn.Module":
    model = new_model(recipe, splits, "teacher")
    train_classifier(model, recipe, splits, seed=recipe.seed, description="train teacher", reporter=reporter)
    return model


def train_scratch(recipe: Recipe, splits: "Splits", reporter: Reporter | None = None, *,
                  distributed: bool = False) -> tuple["nn.Module", object]:
    """The baseline: the student's architecture on the labelled samples alone, same steps and seed."""
    from edgekd.distill.losses import LOSSES
    from edgekd.distill.trainer import fit

    t = recipe.distill.train
    model = new_model(recipe, splits, "student")
    result = fit(model, splits.x_train[splits.labelled], splits.y_train[splits.labelled], loss_fn=LOSSES["ce"],
                 steps=budget(recipe, splits), batch_size=t.batch_size, lr=t.lr, weight_decay=t.weight_decay,
                 seed=recipe.seed, val=(splits.x_val, splits.y_val), reporter=reporter,
                 description="train scratch baseline", distributed=distributed)
    return model, result


def teacher_logits_fn(recipe: Recipe, splits: "Splits", x: np.ndarray, rows: np.ndarray,
                      cache_root: Path | None, reporter: Reporter) -> Callable[["nn.Module", str], np.ndarray]:
    """(teacher, name) -> its logits on the transfer set; with a cache root, computed once per (weights, data)."""
    from edgekd.distill.trainer import predict_logits
    from edgekd.rundir import hash_obj

    d = recipe.distill
    if cache_root is None or not d.cache:
        return lambda teacher, name: predict_logits(teacher, x)
    from edgekd.distill.teacher_cache import TeacherCache, cache_key

    cache = TeacherCache(cache_root)
    data = hash_obj({"data": splits.fingerprint(), "rows": rows.tolist()})

    def logits(teacher: "nn.Module", name: str) -> np.ndarray:
        weights = _weights_sha256(teacher)
        key = cache_key(teacher=weights, data=data, transform="identity", topk=d.cache_topk)
        entry, hit = cache.get_or_compute(key, lambda: predict_logits(teacher, x), topk=d.cache_topk,
                                          meta={"run": recipe.name, "teacher": name})
        reporter.note(f"teacher outputs ({name}): {'cache hit' if hit else 'computed and cached'}")
        return np.asarray(entry.dense())

    return logits


def _weights_sha256(model: "nn.Module") -> str:
    """sha256 over the state dict's names, shapes, dtypes and raw bytes (the teacher-cache key)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{name}:{array.dtype}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def ensemble_members(recipe: Recipe, splits: "Splits", reporter: Reporter) -> list["nn.Module"]:
    """The ensemble's other teachers: loaded from their checkpoints or trained like the teacher (own seed)."""
    from edgekd.checkpoints import load_weights
    from edgekd.distill.lineage import check_teacher_generation, checkpoint_generation
    from edgekd.distill.trainer import seed_everything
    from edgekd.models import create_model

    members = []
    for i, member in enumerate(recipe.distill.ensemble.members, start=1):
        seed = recipe.seed + member.seed_offset
        seed_everything(seed)
        model = create_model(member.model.family, in_shape=splits.input_shape, num_classes=splits.num_classes,
                             **member.model.params)
        if member.checkpoint is not None:
            load_weights(model, Path(member.checkpoint), role=f"ensemble member {i}")
            warning = check_teacher_generation(checkpoint_generation(Path(member.checkpoint)),
                                               source=str(member.checkpoint), allow=recipe.distill.allow_generation)
            if warning:
                reporter.note(f"warning: {warning}")
        else:
            train_classifier(model, recipe, splits, seed=seed, description=f"train ensemble teacher {i}",
                             reporter=reporter, val=False)
        members.append(model)
    return members


def blackbox_logits_fn(recipe: Recipe, splits: "Splits", rows: np.ndarray) -> Callable[[], np.ndarray]:
    """The black-box teacher's logits on the transfer set; its source covers the whole training split."""
    from edgekd.distill.blackbox import load_teacher_outputs

    cfg = recipe.distill.blackbox

    def logits() -> np.ndarray:
        full = load_teacher_outputs(cfg.source, x=splits.x_train, num_samples=len(splits.x_train),
                                    num_classes=splits.num_classes, kind=cfg.kind)
        return np.asarray(full[rows], dtype=np.float32)

    return logits


def build_job(recipe: Recipe, splits: "Splits", teacher: Callable[[], "nn.Module"], *,
              reporter: Reporter | None = None, cache_root: Path | None = None,
              distributed: bool = False) -> "DistillJob":
    from edgekd.distill.strategies import DistillJob

    reporter = reporter or SilentReporter()
    x, target, rows = transfer_set(recipe, splits)
    return DistillJob(
        config=recipe.distill, make_student=lambda seed: new_model(recipe, splits, "student", seed),
        teacher=teacher, teacher_logits=teacher_logits_fn(recipe, splits, x, rows, cache_root, reporter),
        extra_teachers=lambda: ensemble_members(recipe, splits, reporter),
        blackbox_logits=blackbox_logits_fn(recipe, splits, rows), x=x, target=target,
        labelled_x=splits.x_train[splits.labelled], labelled_y=splits.y_train[splits.labelled],
        in_shape=splits.input_shape, num_classes=splits.num_classes, steps=budget(recipe, splits),
        val=(splits.x_val, splits.y_val), seed=recipe.seed, reporter=reporter, distributed=distributed)


def distill(recipe: Recipe, splits: "Splits | None" = None, *, teacher: "nn.Module | None" = None,
            reporter: Reporter | None = None, cache_root: Path | None = None) -> "DistillOutcome":
    """Distil the recipe's student with its strategy; trains the teacher first when none is given and
    the strategy needs one (no lineage check here: the pipeline's distill stage does that)."""
    from edgekd.distill.strategies import STRATEGIES

    splits = splits or load_splits(recipe)
    holder: dict[str, "nn.Module"] = {}

    def get_teacher() -> "nn.Module":
        if "teacher" not in holder:
            model = teacher if teacher is not None else train_teacher(recipe, splits, reporter)
            # a teacher only answers: in train mode its feature maps would use batch statistics and every
            # forward of a feature term or a progressive stage would move its BatchNorm running statistics
            holder["teacher"] = model.eval()
        return holder["teacher"]

    job = build_job(recipe, splits, get_teacher, reporter=reporter, cache_root=cache_root)
    return STRATEGIES[recipe.distill.strategy](job)


def distill_student(recipe: Any, *, teacher: "nn.Module | None" = None,
                    reporter: Reporter | None = None) -> "DistillOutcome":
    """`edgekd.distill`: the recipe (a Recipe, a path, a built-in name or a dict) loaded and checked, its data
    split, its teacher trained unless one is given, its student distilled. Arguments are checked before any
    work (a given teacher by one forward on two samples of the data), and the caller's random generators and
    teacher's train/eval modes are left as they were (as edgekd.run leaves them)."""
    from edgekd.errors import RecipeError
    from edgekd.progress import usable_reporter
    from edgekd.recipe import load_recipe
    from edgekd.rng import kept_global_rngs

    recipe = load_recipe(recipe)
    reporter = usable_reporter(reporter)
    if recipe.task == "text":  # the image stages would look its text student family up among image families
        raise RecipeError(f"edgekd.distill takes image recipes; {recipe.name} is a text recipe (task: text)",
                          why="a text run distils with its own stages, after its teacher encoder has embedded the "
                              "corpus, and those run in edgekd.run",
                          fix="run it with edgekd.run(recipe) (or `edgekd run RECIPE`): the student is "
                              "<run>/checkpoints/student.pt")
    if teacher is None:
        with kept_global_rngs():
            return distill(recipe, reporter=reporter)
    from torch import nn

    if not isinstance(teacher, nn.Module):
        raise RecipeError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__} {repr(teacher)[:60]}",
                          fix="pass the teacher model itself, or leave teacher out to train the recipe's")
    strategy = recipe.distill.strategy
    if strategy in TEACHERLESS:  # it would be ignored in silence
        raise RecipeError(f"teacher= is not used by distill.strategy: {strategy}",
                          why=TEACHERLESS[strategy],
                          fix="leave teacher out, or distil from it with a strategy that reads it (e.g. standard)")
    modes = {module: module.training for module in teacher.modules()}  # distillation puts it in eval mode
    try:
        with kept_global_rngs():
            splits = load_splits(recipe)
            check_teacher(teacher, splits)
            return distill(recipe, splits, teacher=teacher, reporter=reporter)
    finally:  # the caller's teacher as it came, in train mode if it was (module by module: a frozen part stays so)
        for module, training in modes.items():
            module.training = training


# The strategies that learn from no teacher module, and what they learn from instead.
TEACHERLESS = {"self": "self-distillation learns from the student's own earlier generations",
               "mutual": "mutual learning's peers teach each other",
               "blackbox": "a black-box student learns from the teacher's saved outputs (distill.blackbox.source)"}


def check_teacher(teacher: "nn.Module", splits: "Splits") -> None:
    """One forward of a caller's teacher on two training samples (eval mode, no gradients): a teacher of another
    input shape or number of classes is refused by name, not as a raw torch error from inside training."""
    import torch

    from edgekd.errors import RecipeError, first_line

    x = torch.from_numpy(splits.x_train[:2])
    shape, classes = list(splits.input_shape), splits.num_classes
    leave_out = "or leave teacher out to train the recipe's"
    teacher.eval()
    try:
        with torch.no_grad():
            out = teacher(x)
    except Exception as exc:  # the caller's module: any failure on the recipe's samples is that misfit
        raise RecipeError(f"the teacher cannot take the recipe's data ({splits.name}: samples of shape {shape})",
                          why=f"its forward on a batch of {len(x)} samples [{len(x)}, {', '.join(map(str, shape))}] "
                              f"failed: {first_line(exc)}",
                          fix=f"pass a teacher trained on {splits.name} (input [batch, {', '.join(map(str, shape))}], "
                              f"{classes} classes), {leave_out}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(x), classes):
        got = f"has shape {list(out.shape)}" if isinstance(out, torch.Tensor) else f"is a {type(out).__name__}"
        raise RecipeError(f"the teacher's output on {len(x)} samples {got}, not logits [{len(x)}, {classes}]",
                          why=f"a teacher gives one logit per class of the recipe's data ({splits.name}: "
                              f"{classes} classes), as a single tensor",
                          fix=f"pass a teacher with a {classes}-class output for {splits.name}, {leave_out}")
