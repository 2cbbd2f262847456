"""Checkpoints: a model's state dict plus the spec needed to rebuild it, loaded with weights_only=True."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekd.errors import CheckpointError, first_line
from edgekd.rundir import atomic_path

if TYPE_CHECKING:
    from torch import nn

CHECKPOINT_FORMAT = "edgekd.checkpoint/1"


def save_checkpoint(model: "nn.Module", path: Path, **meta: Any) -> Path:
    import torch

    payload = {"format": CHECKPOINT_FORMAT, "spec": getattr(model, "edgekd_spec", None),
               "state_dict": model.state_dict(), "meta": meta}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint safely: weights_only=True refuses pickled code."""
    import torch

    if not Path(path).is_file():
        raise CheckpointError(f"checkpoint not found: {path}", fix="check the path in the recipe (teacher.checkpoint)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        raise CheckpointError(
            f"cannot load checkpoint {path}",
            why=(f"it holds a pickled Python object ({unsafe.group(1)}), which safe loading (weights_only) refuses"
                 if unsafe else first_line(exc)),
            fix="give a state dict saved with torch.save(model.state_dict(), PATH) or an edgekd checkpoint; "
                "checkpoints holding pickled code are refused for safety",
        ) from None
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        return payload
    if isinstance(payload, dict) and all(hasattr(v, "shape") for v in payload.values()):
        return {"format": "state_dict", "spec": None, "state_dict": payload, "meta": {}}
    raise CheckpointError(f"{path} holds no state dict", why=f"it holds a {type(payload).__name__}",
                          fix="save the weights with torch.save(model.state_dict(), PATH)")


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
        raise CheckpointError(
            f"checkpoint {path} does not fit the {role} model{hint}",
            why="; ".join(details),
            fix=f"set {role}.model (family and params) in the recipe to the architecture the checkpoint was saved from",
        )
    model.load_state_dict(state)
    model.eval()
    return payload
