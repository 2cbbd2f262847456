"""A student token table that keeps only the teacher tokens its training text uses.

Why: the teacher's WordPiece vocabulary has 30,522 tokens, and the student's token table is most of its
size; the training corpus of the minilm recipe uses 13,258 of them, and those cover 99.94% of the held-out
token mass. Keeping only those rows lets the table be twice as wide in the same bytes. The device still
feeds the teacher tokenizer's ids: a small map inside the graph sends each id to its row, and every
token the table does not keep to the row of the tokenizer's unknown token. The map is int16 (61 KB for
the 30,522 ids) while the table has fewer than 32,768 rows.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn


def corpus_token_ids(ids: np.ndarray, always: Iterable[int]) -> np.ndarray:
    """The sorted teacher ids that occur in `ids` (token id arrays), plus `always` (the special tokens)."""
    return np.union1d(np.unique(ids), np.asarray(list(always), dtype=np.int64)).astype(np.int64)


class TokenRows(nn.Module):
    """Teacher token id -> row of the student's table (the rows of `kept`, in order; others -> `fallback`'s)."""

    def __init__(self, vocab_size: int, kept: np.ndarray | list[int], fallback: int) -> None:
        super().__init__()
        kept = np.asarray(kept, dtype=np.int64)
        if kept.ndim != 1 or len(np.unique(kept)) != len(kept) or kept.min() < 0 or kept.max() >= vocab_size:
            raise ValueError(f"kept token ids must be distinct ids below the vocabulary size {vocab_size}")
        if fallback not in set(kept.tolist()):
            raise ValueError(f"the fallback token id {fallback} must be one of the kept ids")
        dtype = np.int16 if len(kept) <= np.iinfo(np.int16).max else np.int32  # half the bytes in the graph
        row = np.full(vocab_size, int(np.flatnonzero(kept == fallback)[0]), dtype=dtype)
        row[kept] = np.arange(len(kept), dtype=dtype)
        self.register_buffer("kept", torch.from_numpy(kept))
        self.register_buffer("row", torch.from_numpy(row))

    @property
    def size(self) -> int:
        return int(self.kept.numel())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.row[ids].to(torch.int32)


def table_rows(vocab_size: int, token_rows: TokenRows | None) -> int:
    """Rows of a student's token table: the whole teacher vocabulary, or the tokens `token_rows` keeps."""
    return vocab_size if token_rows is None else token_rows.size


def per_row(per_token: np.ndarray, token_rows: TokenRows | None) -> np.ndarray:
    """An array with one row per teacher token, cut to the rows of a student's table (as it is when it has
    another number of rows: then it fits neither, and the caller's shape check says so)."""
    if token_rows is None or len(per_token) != len(token_rows.row):
        return per_token
    return per_token[token_rows.kept.numpy()]
