"""Checkpoints: a model's state dict plus the spec needed to rebuild it, loaded with weights_only=True."""

from __future__ import annotations

import numbers
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekd.errors import CheckpointError, first_line
from edgekd.rundir import atomic_path

if TYPE_CHECKING:
    from torch import nn

CHECKPOINT_FORMAT = "edgekd.checkpoint/1"
SPEC_KEYS = ("family", "params", "in_shape", "num_classes")  # what create_model needs to rebuild the model

_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"  # torch.save's pre-zip format (torch < 1.6)
_WHERE = "the checkpoint given on the command line, or teacher.checkpoint in the recipe"
_EXPECTED = "an edgekd checkpoint (<run>/checkpoints/*.pt) or a state dict saved with torch.save"
_ONNX, _TFLITE, _YAML = "an ONNX model", "a TFLite model", "a YAML file"
_ARTIFACT_HINT = "; to benchmark an {} artifact use `edgekd bench`, or distill from it as a black-box teacher"
_HINTS = {_ONNX: _ARTIFACT_HINT.format(".onnx"), _TFLITE: _ARTIFACT_HINT.format(".tflite"),
          _YAML: "; a recipe is run with `edgekd run RECIPE`"}


# Metrics a run's manifest keeps and its checkpoints do not: per-sample results (of no use beside the weights).
PER_SAMPLE_METRICS = ("per_class_accuracy", "test_correct")


def save_checkpoint(model: "nn.Module", path: Path, **meta: Any) -> Path:
    """Weights, spec and `meta`, without the timings (`seconds`, `*_seconds`) and per-sample results in
    `meta["metrics"]`: a stage that retrains to the same weights writes the same bytes, so the stages after it
    are not redone (the run's manifest keeps them all)."""
    import torch

    if isinstance(meta.get("metrics"), dict):
        meta = {**meta, "metrics": {k: v for k, v in meta["metrics"].items() if k not in PER_SAMPLE_METRICS
                                    and k != "seconds" and not k.endswith("_seconds")}}
    payload = {"format": CHECKPOINT_FORMAT, "spec": getattr(model, "edgekd_spec", None),
               "state_dict": model.state_dict(), "meta": meta}
    # Saved through a file object: given a path, torch names the archive's inner folder after the (random)
    # temp file name, and equal weights would give different bytes, rerunning every stage downstream.
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(payload, fh)
    return path


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint safely: weights_only=True refuses pickled code. Files that are not torch checkpoints
    are told apart first, so a user never sees torch's advice to load unsafely."""
    path = Path(path)
    _check_is_torch_file(path)
    return _as_checkpoint(_load_weights_only(path), path)


def _check_is_torch_file(path: Path) -> None:
    """Refuse a missing path, a directory, an empty or damaged file, or a file of another kind, by name."""
    if path.is_dir():
        raise _directory_error(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}", why="no such file" if not path.exists() else
                              "it is not a file", fix=f"check the path ({_WHERE})")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)",
                              why="an interrupted save or copy leaves an empty file",
                              fix=f"copy it again, or re-create it; check the path ({_WHERE})")
    with open(path, "rb") as fh:
        head = fh.read(256)
    if head.startswith(_LEGACY_MAGIC):
        return
    if head.startswith(b"PK\x03\x04") and not zipfile.is_zipfile(path):
        raise CheckpointError(f"checkpoint {path} is damaged (a truncated zip archive)",
                              why="an interrupted save or copy cuts the archive short",
                              fix="copy it again, or re-create it")
    kind = _zip_kind(path) if zipfile.is_zipfile(path) else _looks_like(path, head)
    if kind is not None:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (it looks like {kind})",
                              why="a PyTorch checkpoint is the zip archive torch.save writes",
                              fix=f"give {_EXPECTED}{_HINTS.get(kind, '')}")


def _zip_kind(path: Path) -> str | None:
    """None for a torch archive (it holds <folder>/data.pkl), else what the zip seems to be."""
    with zipfile.ZipFile(path) as archive:
        if any(name.endswith("/data.pkl") for name in archive.namelist()):
            return None
    return "a zip archive without PyTorch data"


def _looks_like(path: Path, head: bytes) -> str:
    """A best guess at a non-torch file's kind, from its first bytes and suffix, for the error message."""
    suffix = path.suffix.lower()
    if suffix == ".tflite" or head[4:8] == b"TFL3":
        return _TFLITE
    if suffix == ".onnx" or (head[:1] == b"\x08" and head[2:3] in (b"\x12", b"\x1a", b"\x22", b"\x3a", b"\x42")):
        return _ONNX
    if head[8:10] == b'{"':
        return "a safetensors file"
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file (Keras .h5)"
    if head[:1] == b"\x80":
        return "a plain Python pickle"
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            return _YAML if suffix in (".yaml", ".yml") else "a text file"
    return "unrecognised binary data"


def _directory_error(path: Path) -> CheckpointError:
    """A directory given as checkpoint: name the checkpoints inside it (a run keeps them in checkpoints/)."""
    found = sorted(path.glob("*.pt")) + sorted(path.glob("checkpoints/*.pt"))
    if not found:
        return CheckpointError(f"checkpoint {path} is a directory, not a file", why="it holds no *.pt files",
                               fix=f"give {_EXPECTED}; check the path ({_WHERE})")
    names = ", ".join(str(p) for p in found[:5]) + (", ..." if len(found) > 5 else "")
    return CheckpointError(f"checkpoint {path} is a directory, not a file", why=f"checkpoints inside it: {names}",
                           fix=f"give one checkpoint file, e.g. {found[0]}")


def _load_weights_only(path: Path) -> Any:
    """torch.load with weights_only=True; its refusals become a CheckpointError that never advises unsafe loading."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc)
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if unsafe or "weights_only" in text.lower() or "weights only" in text.lower():
            what = f"a pickled Python object ({unsafe.group(1)})" if unsafe else "pickled Python data beyond tensors"
            raise CheckpointError(
                f"cannot load checkpoint {path}",
                why=f"it holds {what}; edgekd loads weights only, for safety",
                fix="give an edgekd checkpoint, or (as teacher.checkpoint in a recipe) a state dict saved with "
                    "torch.save(model.state_dict(), PATH), without custom classes; for `edgekd export` of a model "
                    "of your own, export it with torch.onnx.export and run `edgekd bench MODEL.onnx`",
            ) from None
        raise CheckpointError(f"cannot load checkpoint {path}", why=first_line(exc),
                              fix=f"give {_EXPECTED}; if it was copied, copy it again") from None


def _as_checkpoint(payload: Any, path: Path) -> dict[str, Any]:
    """An edgekd checkpoint as saved, or a bare state dict wrapped in the same shape (no spec)."""
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        _check_edgekd_payload(payload, path)
        return payload
    if isinstance(payload, dict) and all(hasattr(v, "shape") for v in payload.values()):
        return {"format": "state_dict", "spec": None, "state_dict": payload, "meta": {}}
    kind = payload.get("format") if isinstance(payload, dict) else None
    if isinstance(kind, str) and kind.startswith(CHECKPOINT_FORMAT.split("/")[0] + "/"):
        raise CheckpointError(f"{path} is an edgekd checkpoint of another format ({kind})",
                              why=f"this edgekd reads {CHECKPOINT_FORMAT}",
                              fix="load it with the edgekd version that wrote it, or re-create it with this one")
    raise CheckpointError(f"{path} holds no state dict", why=f"it holds a {type(payload).__name__}",
                          fix="save the weights with torch.save(model.state_dict(), PATH)")


def _check_edgekd_payload(payload: dict[str, Any], path: Path) -> None:
    """Check what callers index into (state_dict, spec keys), so a hand-edited file fails here, by name,
    rather than as a KeyError deep in export or model building."""
    if not isinstance(payload.get("state_dict"), dict):
        raise CheckpointError(f"checkpoint {path} has no state_dict",
                              why="its 'state_dict' entry is missing or not a dict",
                              fix="re-save it with edgekd, or give a plain torch.save(model.state_dict(), PATH)")
    spec = payload.get("spec")
    if spec is None:
        return
    missing = [k for k in SPEC_KEYS if k not in spec] if isinstance(spec, dict) else list(SPEC_KEYS)
    if missing:
        raise CheckpointError(
            f"checkpoint {path} has an incomplete spec (missing {', '.join(missing)})",
            why=f"edgekd rebuilds the model from spec: {', '.join(SPEC_KEYS)}",
            fix="use a checkpoint written by edgekd (<run>/checkpoints/*.pt), or add the missing spec keys",
        )
    problems = _spec_problems(spec)
    if problems:
        key, rule = problems[0]
        raise CheckpointError(
            f"checkpoint {path} has an invalid spec: {key} must be {rule}, got {spec[key]!r}",
            why="edgekd rebuilds the model from its spec, and this value cannot build one (a hand edit?)",
            fix=f"use a checkpoint written by edgekd (<run>/checkpoints/*.pt), or correct spec.{key}",
        )


def _positive_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0


def _spec_problems(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, rule) for each spec value of the wrong kind: they would fail as a TypeError inside model building."""
    rules = {"family": (lambda v: isinstance(v, str), "a model family name"),
             "params": (lambda v: isinstance(v, dict), "a mapping of model parameters"),
             "in_shape": (lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(map(_positive_int, v)),
                          "a list of positive integers (one sample's shape)"),
             "num_classes": (_positive_int, "a positive integer")}
    return [(key, rule) for key, (ok, rule) in rules.items() if not ok(spec[key])]


def text_run_role(payload: dict[str, Any]) -> str | None:
    """The role ("teacher", "student", "scratch") of a checkpoint a text run wrote, else None. Such a checkpoint
    records no spec, as a bare state dict: its model is rebuilt from what its run holds (the teacher's encoder
    folder, the corpus vocabulary). It is known by its meta: the teacher's class head names its `hf_folder`, a
    student its text student `family`."""
    from edgekd.text.student import TEXT_STUDENTS

    meta = payload.get("meta")
    if payload.get("format") != CHECKPOINT_FORMAT or payload.get("spec") is not None or not isinstance(meta, dict):
        return None
    if "hf_folder" not in meta and meta.get("family") not in TEXT_STUDENTS:
        return None
    return str(meta.get("role") or "")


# Why `edgekd layers` lists no layers of a text model (a text family name or a text run's checkpoint).
TEXT_NO_LAYERS_WHY = ("edgekd layers pairs an image teacher's and student's layers for distill.features; a text run "
                      "distils the teacher's embeddings and logits (distill.text) and takes no distill.features")


def text_run_checkpoint_error(path: Path, payload: dict[str, Any], *, command: str) -> CheckpointError | None:
    """What `edgekd export` or `edgekd layers` (`command`) says of a text run's checkpoint; None for any other.
    Both said it was a bare state dict, not written by a run, which sent the user looking for another file."""
    role = text_run_role(payload)
    if role is None:
        return None
    run = (payload.get("meta") or {}).get("run")
    whose = f"the {role} checkpoint of the text run {run}" if role and run else "a text run's checkpoint"
    if command == "layers":
        from edgekd.models import MODELS

        return CheckpointError(f"{path} is {whose}: text models have no feature-KD layer listing",
                               why=TEXT_NO_LAYERS_WHY,
                               fix=f"give image models: model families ({', '.join(MODELS.names())}) or "
                                   "checkpoints of image runs (<run>/checkpoints/*.pt)")
    copy = Path(path).parent.parent / "recipe.yaml" if Path(path).parent.name == "checkpoints" else None
    kept = f" (a copy of it: {copy})" if copy is not None and copy.is_file() else ""
    return CheckpointError(f"{path} is {whose}: edgekd export takes the checkpoints of image runs",
                           why="a text model is rebuilt from what its run holds (the teacher's encoder folder, the "
                               "corpus vocabulary), not from its checkpoint alone; the run's export stage exports it",
                           fix=f"export it with its run: edgekd run RECIPE --force export, RECIPE being the recipe "
                               f"that made the run{kept}; export.targets there says which files")


def _misfit_fix(payload: dict[str, Any], path: Path, role: str) -> str:
    """How to use a checkpoint that does not fit: a structurally pruned one (it records its prune_plan) has no
    recipe architecture to name; otherwise the recipe field of the role, where it has one."""
    if (payload.get("meta") or {}).get("prune_plan"):
        return (f"{path} is structurally pruned (channels removed), which only the run that pruned it and "
                f"`edgekd export {path}` rebuild; to distil from it, export it and give the artifact folder as "
                "distill.blackbox.source with distill.strategy: blackbox")
    field = f"set {role}.model (family and params)" if role in ("teacher", "student") else "set the model"
    return f"give a checkpoint saved from this architecture, or (in a recipe) {field} to the one it was saved from"


def load_weights(model: "nn.Module", path: Path, *, role: str) -> dict[str, Any]:
    """Load a checkpoint into `model`, explaining shape mismatches by parameter name."""
    payload = read_checkpoint(path)
    state = payload["state_dict"]
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        details = mismatched[:3] + [f"missing {k}" for k in missing[:3]] + [f"unexpected {k}" for k in unexpected[:3]]
        spec = payload.get("spec")
        hint = f" (the checkpoint was saved from {spec['family']} {spec['params']})" if spec else ""
        raise CheckpointError(f"checkpoint {path} does not fit the {role} model{hint}", why="; ".join(details),
                              fix=_misfit_fix(payload, path, role))
    model.load_state_dict(state)
    model.eval()
    return payload
