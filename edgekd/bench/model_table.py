"""The run's PyTorch models side by side (teacher, KD student, scratch baseline, compressed model), for the
console and the HTML report: parameters, the labels each learned from, its step budget and accuracy. Without it
the teacher-vs-student accuracy and the label counts behind the KD gain were only sentences in the findings."""

from __future__ import annotations

from typing import Any

MODEL_HEADER = ("model", "params", "labelled samples", "steps", "test acc", "val acc", "train s")
MODEL_CAPTION = ("Each model as its stage scored it in PyTorch on the test split. Labelled samples: the training "
                 "samples whose labels it learned from (the KD student also learns from the teacher's outputs on "
                 "every training sample); the scratch baseline has the KD student's labels and step budget.")
_ROLES = (("teacher", "teacher"), ("student", "KD student"), ("scratch", "scratch baseline"),
          ("compressed", "compressed"))


def _number(value: Any, spec: str) -> str:
    return "–" if value is None or value != value else format(value, spec)  # NaN: not measured


def _labels(role: str, metrics: dict[str, Any]) -> str:
    """The labelled samples a model learned from; a loaded teacher's are not recorded in the run."""
    if metrics.get("labelled_samples") is not None:
        return f"{metrics['labelled_samples']:,}"
    if role == "teacher" and metrics.get("source") == "checkpoint":
        return "not recorded (checkpoint)"
    return "–"


def model_cells(summary: dict[str, Any]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """MODEL_HEADER and model_rows without the columns no model has a value in (a text run keeps no validation
    accuracy)."""
    rows = model_rows(summary)
    keep = [i for i in range(len(MODEL_HEADER)) if i == 0 or any(row[i] != "–" for row in rows)]
    return tuple(MODEL_HEADER[i] for i in keep), [tuple(row[i] for i in keep) for row in rows]


def model_rows(summary: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per PyTorch model the run trained or loaded, as its stage scored it on the test split."""
    models = summary.get("models") or {}
    rows = []
    for role, label in _ROLES:
        m = models.get(role)
        if not m:
            continue
        seconds = m.get("train_seconds", m.get("seconds"))
        rows.append((label, _number(m.get("parameters"), ","), _labels(role, m), _number(m.get("steps"), ","),
                     _number(m.get("test_accuracy"), ".2%"), _number(m.get("val_accuracy"), ".2%"),
                     _number(seconds, ".1f")))
    return rows
