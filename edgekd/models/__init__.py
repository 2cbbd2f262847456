"""Model families by name, built through one entry point (`create_model`).

Every builder takes the sample shape (without batch) and the number of classes, plus its own
width/depth parameters, and returns an `nn.Module` mapping (N, *in_shape) float32 to (N, classes) logits.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Callable

from edgekd.errors import RecipeError, RegistryError
from edgekd.registry import Registry

if TYPE_CHECKING:
    from torch import nn

MODELS: Registry[Callable[..., "nn.Module"]] = Registry("model family", "model families")


def create_model(family: str, *, in_shape: tuple[int, ...], num_classes: int, **params: Any) -> "nn.Module":
    """Build a registered model family; None-valued params are dropped so call sites stay uniform."""
    builder = MODELS[family]
    params = {k: v for k, v in params.items() if v is not None}
    accepted = inspect.signature(builder).parameters
    unknown = [k for k in params if k not in accepted]
    if unknown:
        raise RecipeError(
            f"model family '{family}' has no parameter(s) {', '.join(unknown)}",
            why=f"'{family}' accepts: {', '.join(p for p in accepted if p not in ('in_shape', 'num_classes'))}",
            fix="remove or rename those parameters",
        )
    model = builder(in_shape=tuple(in_shape), num_classes=num_classes, **params)
    model.edgekd_spec = {"family": family, "params": params, "in_shape": list(in_shape), "num_classes": num_classes}
    return model


def _text_student_families() -> list[str]:
    """The text student families' names (their registry imports torch: read when asked)."""
    from edgekd.text.student import TEXT_STUDENTS

    return TEXT_STUDENTS.names()


def _names_a_checkpoint(arg: str) -> bool:
    """`edgekd layers` takes `arg` for a checkpoint: a *.pt or an existing path (a folder too: read_checkpoint
    says what is inside) that is no family name. A family name is the family even where a file or folder of that
    name lies in the current folder; `./cnn` names that one."""
    from pathlib import Path

    if arg in MODELS or arg in _text_student_families():
        return False
    return Path(arg).suffix == ".pt" or Path(arg).exists()


def model_from_name_or_checkpoint(arg: str, *, data: str, role: str, like: "nn.Module | None" = None) -> "nn.Module":
    """A model for inspection: a family name with default parameters on `data`'s input shape (or on the input
    shape and classes of the edgekd model `like`), or the architecture and weights of an edgekd checkpoint; a
    text student family is refused by name."""
    from pathlib import Path

    from edgekd.checkpoints import TEXT_NO_LAYERS_WHY

    if arg in _text_student_families():
        raise RegistryError(f"{arg} is a text student family: text models have no feature-KD layer listing",
                            why=TEXT_NO_LAYERS_WHY, fix=f"give image model families ({', '.join(MODELS.names())}) "
                                                        "or checkpoints of image runs (<run>/checkpoints/*.pt)")
    if _names_a_checkpoint(arg):
        from edgekd.checkpoints import load_weights, read_checkpoint, text_run_checkpoint_error

        payload = read_checkpoint(Path(arg))
        text_run = text_run_checkpoint_error(Path(arg), payload, command="layers")
        if text_run is not None:
            raise text_run
        spec = payload.get("spec")
        if not spec:
            raise RecipeError(f"{arg} holds no architecture", why="it is a plain state dict",
                              fix=f"give the {role} as a model family name ({', '.join(MODELS.names())})")
        model = model_of_checkpoint(spec, payload.get("meta") or {})
        load_weights(model, Path(arg), role=role)
        return model
    if like is not None:
        return create_model(arg, in_shape=tuple(like.edgekd_spec["in_shape"]),
                            num_classes=like.edgekd_spec["num_classes"])
    from edgekd.data import load_data

    splits = load_data(data)
    return create_model(arg, in_shape=splits.input_shape, num_classes=splits.num_classes)


def layer_models(teacher: str, student: str, data: str | None) -> dict[str, "nn.Module"]:
    """The teacher and student `edgekd layers` pairs. `data` (default digits) sizes a model family given by name;
    with two checkpoints, which record their input shapes, it would be ignored in silence, so it is refused."""
    roles = (("teacher", teacher), ("student", student))
    checkpoints = [role for role, arg in roles if _names_a_checkpoint(arg)]
    if data is not None and len(checkpoints) == len(roles):
        raise RecipeError(f"--data {data} is not used: the teacher and the student are both checkpoints",
                          why="a checkpoint records the input shape it was trained on; --data sizes a model family "
                              "given by name", fix="leave --data out")
    models = {role: model_from_name_or_checkpoint(arg, data="digits", role=role)
              for role, arg in roles if role in checkpoints}
    # a family beside a checkpoint takes the checkpoint model's input (and --data, if given, must agree with it)
    like = next(iter(models.values()), None)
    for role, arg in roles:
        if role not in models:
            models[role] = model_from_name_or_checkpoint(arg, data=data or "digits", role=role,
                                                         like=None if data else like)
            if like is not None and data is not None:
                _check_same_input(like, models[role], data)
    return {role: models[role] for role, _ in roles}


def _check_same_input(checkpoint_model: "nn.Module", family_model: "nn.Module", data: str) -> None:
    """The layer pairs are computed on one input, which both models must take."""
    want, given = checkpoint_model.edgekd_spec["in_shape"], family_model.edgekd_spec["in_shape"]
    if list(want) != list(given):
        raise RecipeError(f"--data {data} has inputs of shape {list(given)}; the checkpoint's model takes "
                          f"{list(want)}", why="both models of a layer listing must take the same input",
                          fix="leave --data out: the family is then sized as the checkpoint's model")


def model_of_checkpoint(spec: dict[str, Any], meta: dict[str, Any]) -> "nn.Module":
    """A fresh model of the architecture a checkpoint records, for its weights: a structurally pruned one
    (compressed.pt records its prune_plan) is given the pruned shape first, as the pipeline does."""
    model = create_model(spec["family"], in_shape=tuple(spec["in_shape"]), num_classes=spec["num_classes"],
                         **spec["params"])
    return with_recorded_pruning(model, tuple(spec["in_shape"]), meta)


def with_recorded_pruning(model: "nn.Module", in_shape: tuple[int, ...], meta: dict[str, Any]) -> "nn.Module":
    """`model` in the pruned shape a checkpoint's meta records (compressed.pt's prune_plan), the shape its weights
    have; unchanged for a checkpoint that was not structurally pruned."""
    if meta.get("prune_plan"):
        from edgekd.compress.prune import rebuild

        rebuild(model, in_shape, meta["prune_plan"])
    return model


def count_parameters(model: "nn.Module") -> int:
    return sum(p.numel() for p in model.parameters())


# Register the built-in families.
from edgekd.models import families as _families  # noqa: E402,F401
