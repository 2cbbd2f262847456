"""A text run's embedding table: how close each model's sentence embedding comes to the teacher's, the PyTorch
students and every exported file side by side, for the console and the HTML report. Without it the files'
scores were a run-on sentence in the findings, one of ten numbers per file."""

from __future__ import annotations

from typing import Any

EMBEDDING_HEADER = ("model", "cosine to teacher", "recall@10", "recall@10, teacher's index", "best@10",
                    "cosine to its PyTorch model (mean / min)")


def _score(metrics: dict[str, Any], key: str, spec: str) -> str:
    value = metrics.get(key)
    return "–" if value is None or value != value else format(value, spec)  # NaN: not measured


def _retrieval(metrics: dict[str, Any] | None) -> tuple[str, str, str, str]:
    m = metrics or {}
    return (_score(m, "cosine_to_teacher", ".3f"), _score(m, "recall_at_10", ".3f"),
            _score(m, "recall_at_10_teacher_index", ".3f"), _score(m, "best_match_at_10", ".1%"))


def _parity(check: dict[str, Any] | None) -> str:
    if not check or check.get("mean_cosine") is None:
        return "–"
    low = check.get("min_cosine")
    return f"{check['mean_cosine']:.4f}" + ("" if low is None else f" / {low:.4f}")


def embedding_rows(summary: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per model: the PyTorch student and scratch as their stages scored them, then each exported file
    in the order of the artifact table (the teacher's files are not scored against the teacher, only checked
    against their own PyTorch model). Empty for a run that is not a text run."""
    text = summary.get("text")
    if not text:
        return []
    models = summary.get("models") or {}
    rows = [(f"{role} (PyTorch)", *_retrieval(models[role]), "–")
            for role in ("student", "scratch") if (models.get(role) or {}).get("cosine_to_teacher") is not None]
    files = (text.get("exported_retrieval") or {}).get("files") or {}
    parity = text.get("embedding_parity") or {}
    names = dict.fromkeys([r["name"] for r in summary.get("rows", [])] + list(files) + list(parity))
    rows += [(name, *_retrieval(files.get(name)), _parity(parity.get(name))) for name in names]
    return rows


def embedding_caption(summary: dict[str, Any]) -> str:
    """Where the numbers come from: which sentences, at which lengths."""
    text = summary.get("text") or {}
    exported = text.get("exported_retrieval") or {}
    lengths = ((summary.get("recipe") or {}).get("data") or {}).get("text") or {}
    pool = exported.get("pool", text.get("retrieval_pool"))
    trained = lengths.get("train_length")
    device = exported.get("length", lengths.get("device_length"))
    return (f"Each model's sentence embedding against the teacher's on {pool} held-out sentences: the PyTorch "
            f"models at the training length ({trained} tokens), the exported files at the device length "
            f"({device} tokens), as the export stage ran them. Recall@10: the share of the teacher's 10 nearest "
            "neighbours the model finds; teacher's index: the model embeds the queries only; best@10: how often "
            "the teacher's best match is in the model's top 10. The teacher's files are not scored against the "
            "teacher (a minute or more each); the last column checks each file against its own PyTorch model.")
