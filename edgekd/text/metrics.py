"""How close a student's sentence embeddings and classes are to the teacher's, on held-out text."""

from __future__ import annotations

import numpy as np


def mean_cosine(student: np.ndarray, teacher: np.ndarray) -> float:
    s = student / np.maximum(np.linalg.norm(student, axis=1, keepdims=True), 1e-12)
    t = teacher / np.maximum(np.linalg.norm(teacher, axis=1, keepdims=True), 1e-12)
    return float((s * t).sum(1).mean())


def neighbours(embeddings: np.ndarray, k: int) -> np.ndarray:
    """Indices of each row's k nearest other rows by cosine similarity (itself excluded)."""
    e = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    sim = e @ e.T
    np.fill_diagonal(sim, -np.inf)
    k = min(k, len(e) - 1)
    top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    return top


def recall_at_k(student: np.ndarray, teacher: np.ndarray, k: int = 10) -> float:
    """Retrieval agreement: the share of the teacher's k nearest neighbours that the student's search also
    returns in its top k, averaged over queries (each held-out sentence queries the others)."""
    if len(student) < 2:
        return float("nan")
    s, t = neighbours(student, k), neighbours(teacher, k)
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(s.tolist(), t.tolist())]))


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    keep = labels >= 0
    return float((logits[keep].argmax(1) == labels[keep]).mean()) if keep.any() else float("nan")


def text_metrics(logits: np.ndarray, embeddings: np.ndarray, labels: np.ndarray,
                 teacher_embeddings: np.ndarray | None, k: int = 10) -> dict[str, float]:
    out = {"accuracy": accuracy(logits, labels)}
    if teacher_embeddings is not None:
        out["cosine_to_teacher"] = mean_cosine(embeddings, teacher_embeddings)
        out[f"recall_at_{k}"] = recall_at_k(embeddings, teacher_embeddings, k)
    return out
