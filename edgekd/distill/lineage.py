"""Lineage: which generation a model is, and the guard against distilling from distilled students.

Generation 0 is a model trained on data (a teacher, the scratch baseline); a student distilled from a
generation-g teacher is generation g + 1. Teaching with a generation ≥ 2 model (a distilled student's
student) compounds what each step loses: under scarce labels accuracy erodes slowly, rare classes a little
more (see benchmarks/generations.py), a small
cousin of model collapse. edgekd refuses it unless the user says `--allow-generation`, and warns then.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgekd.errors import LineageError

GUARDED_GENERATION = 2


def checkpoint_generation(path: Path) -> int:
    """The generation stored in an edgekd checkpoint (0 for a plain state dict: trained on data, as far as known)."""
    from edgekd.checkpoints import read_checkpoint

    return int(read_checkpoint(Path(path)).get("meta", {}).get("generation", 0) or 0)


def artifact_generation(source: str | Path) -> int:
    """The generation of an exported artifact (its artifact.json lineage), 0 when it has no record."""
    path = Path(source)
    record = path / "artifact.json" if path.is_dir() else path.parent / "artifact.json"
    try:
        return int(json.loads(record.read_text(encoding="utf-8")).get("lineage", {}).get("generation", 0) or 0)
    except (OSError, ValueError, AttributeError):
        return 0


def check_teacher_generation(generation: int, *, source: str, allow: bool) -> str | None:
    """Raise LineageError for a teacher of generation ≥ 2 unless allowed; return the warning when allowed, for
    the caller to say once (the plan check, the distill stage and the ensemble all ask: logged here too, a run
    printed it three times)."""
    if generation < GUARDED_GENERATION:
        return None
    if not allow:
        raise LineageError(
            f"the teacher {source} is generation {generation} (a distilled model distilled again)",
            why="each distillation step loses some of what the data taught; repeated, accuracy erodes slowly, "
                "scarcely labelled classes most (benchmarks/generations.py measures it)",
            fix="distil from a generation 0 or 1 teacher, or pass --allow-generation (recipe: "
                "distill.allow_generation: true) to do it anyway",
        )
    message = (f"distilling from a generation {generation} teacher ({source}): watch the per-class accuracy "
               f"of rare classes in the report")
    return message
