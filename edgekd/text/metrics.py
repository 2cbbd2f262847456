"""How close a student's sentence embeddings and classes are to the teacher's, on held-out text."""

from __future__ import annotations

import numpy as np


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (all-zero rows stay zero): cosine similarity becomes a dot product."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def mean_cosine(student: np.ndarray, teacher: np.ndarray) -> float:
    return float((unit(student) * unit(teacher)).sum(1).mean())


def neighbours(embeddings: np.ndarray, k: int, index: np.ndarray | None = None) -> np.ndarray:
    """Indices of each row's k nearest other rows by cosine similarity (itself excluded), searched among
    `embeddings` themselves or, given `index`, among the rows of `index` (row i of both is the same sentence)."""
    e = unit(embeddings)
    sim = e @ (e if index is None else unit(index)).T
    np.fill_diagonal(sim, -np.inf)
    top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    return top


def recall_at_k(student: np.ndarray, teacher: np.ndarray, k: int = 10) -> float:
    """Retrieval agreement: the share of the teacher's k nearest neighbours that the student's search also
    returns in its top k, averaged over queries (each held-out sentence queries the others). NaN for a pool
    of k sentences or fewer: every other one is a neighbour then, and any student would score 1.0."""
    if len(student) <= k:
        return float("nan")
    return _overlap(neighbours(student, k), neighbours(teacher, k))


def recall_at_k_teacher_index(student: np.ndarray, teacher: np.ndarray, k: int = 10) -> float:
    """The same agreement when the index was built by the teacher (offline, on a server) and only the query
    is embedded by the student on the device: student queries searched among the teacher's embeddings."""
    if len(student) <= k:
        return float("nan")
    return _overlap(neighbours(student, k, index=teacher), neighbours(teacher, k))


def best_match_at_k(student: np.ndarray, teacher: np.ndarray, k: int = 10) -> float:
    """Semantic search's own question: the share of queries whose best match by the teacher is among the
    student's top k. Looser than `recall_at_k`, which asks for all of the teacher's top k, order aside."""
    if len(student) <= k:
        return float("nan")
    best = neighbours(teacher, 1)
    return float((neighbours(student, k) == best).any(axis=1).mean())


def _overlap(found: np.ndarray, wanted: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found.tolist(), wanted.tolist())]))


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    keep = labels >= 0
    return float((logits[keep].argmax(1) == labels[keep]).mean()) if keep.any() else float("nan")


def embedding_metrics(embeddings: np.ndarray, teacher_embeddings: np.ndarray, k: int = 10) -> dict[str, float]:
    """How close embeddings are to the teacher's, as a search over the same sentences sees it: the metrics above,
    with each neighbour search done once (each is a pool x pool similarity matrix)."""
    out = {"cosine_to_teacher": mean_cosine(embeddings, teacher_embeddings)}
    if len(embeddings) <= k:
        return {**out, **dict.fromkeys((f"recall_at_{k}", f"recall_at_{k}_teacher_index", f"best_match_at_{k}"),
                                       float("nan"))}
    found, wanted = neighbours(embeddings, k), neighbours(teacher_embeddings, k)
    best = neighbours(teacher_embeddings, 1)
    return {**out, f"recall_at_{k}": _overlap(found, wanted),
            f"recall_at_{k}_teacher_index": _overlap(neighbours(embeddings, k, index=teacher_embeddings), wanted),
            f"best_match_at_{k}": float((found == best).any(axis=1).mean())}


def text_metrics(logits: np.ndarray, embeddings: np.ndarray, labels: np.ndarray,
                 teacher_embeddings: np.ndarray | None, k: int = 10) -> dict[str, float]:
    out = {"accuracy": accuracy(logits, labels)}
    if teacher_embeddings is not None:
        out.update(embedding_metrics(embeddings, teacher_embeddings, k))
    return out
