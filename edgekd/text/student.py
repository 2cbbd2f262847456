"""The on-device text student: a tiny transformer encoder over the teacher's own WordPiece vocabulary.

Why this shape: it keeps the teacher's tokenizer, so the phone tokenizes exactly as the teacher did and
feeds its ids as they are (a corpus vocabulary maps them to table rows inside the graph); its token
embedding is factorised (vocab × 64, then 64 → hidden, as ALBERT does), which cuts the 30k-row table that
dominates a small BERT to a quarter; attention is written out with plain MatMul/Softmax so ONNX and LiteRT
get the same small set of operators; the attention mask is derived from the ids (id != pad), so the graph
has one input and the device feeds a single int64 array. Outputs: class logits first (what the benchmark
runner scores on the device), then the L2-normalised sentence embedding in the teacher's space (what
semantic search uses).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from edgekd.registry import Registry
from edgekd.text.vocabulary import TokenRows, table_rows

# A family takes (vocab_size, num_classes, pad_id=, max_length=, token_rows=, **params) and provides
# encode(ids) -> the unit-norm embedding, head (nn.Linear on it) and forward(ids) -> (head(embedding),
# embedding): training reads encode and head apart (distill.text.response_into_encoder) and starts head from
# the teacher's. token_rows (data.text.student_vocabulary: corpus) maps teacher ids to the table's rows.
TEXT_STUDENTS: Registry[type] = Registry("text student family", "text student families")


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be a multiple of heads ({heads})")
        self.heads, self.head_dim = heads, hidden // heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, h = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + bias  # bias: [b, 1, 1, n], -1e4 at padding
        return self.out((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, h))


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer (steadier than post-norm when trained from a few thousand sentences)."""

    def __init__(self, hidden: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.attention = SelfAttention(hidden, heads)
        self.ffn = nn.Sequential(nn.Linear(hidden, ffn), nn.GELU(), nn.Linear(ffn, hidden))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), bias)
        return x + self.ffn(self.norm2(x))


class TextEncoder(nn.Module):
    """What the families share: the map from teacher ids to table rows, and the (logits, embedding) outputs."""

    token_rows: TokenRows | None
    head: nn.Linear

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _rows(self, ids: torch.Tensor) -> torch.Tensor:
        return ids if self.token_rows is None else self.token_rows(ids)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.encode(ids)
        return self.head(embedding), embedding


@TEXT_STUDENTS.register("text_transformer")
class TextStudent(TextEncoder):
    """input_ids [batch, length] (int64, padded with pad_id) -> (logits [batch, classes], embedding [batch, dim])."""

    def __init__(self, vocab_size: int, num_classes: int, *, pad_id: int = 0, max_length: int = 128,
                 embed_dim: int = 64, hidden: int = 128, layers: int = 2, heads: int = 2, ffn: int = 512,
                 out_dim: int = 384, token_rows: TokenRows | None = None) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.token_rows = token_rows
        self.token = nn.Embedding(table_rows(vocab_size, token_rows), embed_dim)
        self.expand = nn.Linear(embed_dim, hidden)
        self.position = nn.Parameter(torch.zeros(1, max_length, hidden))
        nn.init.normal_(self.position, std=0.02)
        self.layers = nn.ModuleList(EncoderLayer(hidden, heads, ffn) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden)
        self.project = nn.Linear(hidden, out_dim)
        self.head = nn.Linear(out_dim, num_classes)

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        keep = (ids != self.pad_id).to(torch.float32)  # [b, n]
        x = self.expand(self.token(self._rows(ids))) + self.position[:, : ids.shape[1]]
        bias = ((1.0 - keep) * -1e4)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, bias)
        x = self.norm(x)
        pooled = (x * keep.unsqueeze(-1)).sum(1) / keep.sum(1, keepdim=True).clamp(min=1.0)
        return nn.functional.normalize(self.project(pooled), dim=-1)


@TEXT_STUDENTS.register("text_bag")
class TextBagStudent(TextEncoder):
    """A bag-of-tokens encoder: a pooled average of token embeddings, then an MLP into the teacher's space.

    No attention, so it costs microseconds per sentence on a phone and trains in minutes; it cannot see
    word order, which bounds how close it gets to the teacher (what the transformer student is for).
    `weighted`: each token learns a weight in the average (exp(w), starting at 1), as SIF and Model2Vec
    weigh rare words above "the"; w is the mean of a two-column table, because LiteRT's INT4
    EMBEDDING_LOOKUP misreads one-column tables (measured: embedding cosine 0.92 to PyTorch, 0.99 with two).
    `skip`: a linear path from the pooled vector to the output beside the MLP, so a start from the teacher's
    token outputs (distill.text.token_init) is the student at step 0.
    """

    def __init__(self, vocab_size: int, num_classes: int, *, pad_id: int = 0, max_length: int = 128,
                 embed_dim: int = 128, hidden: int = 512, out_dim: int = 384, weighted: bool = False,
                 skip: bool = False, token_rows: TokenRows | None = None) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.token_rows = token_rows
        rows = table_rows(vocab_size, token_rows)
        self.token = nn.Embedding(rows, embed_dim)
        self.token_weight = nn.Embedding(rows, 2) if weighted else None
        if self.token_weight is not None:
            nn.init.zeros_(self.token_weight.weight)
        self.mlp = nn.Sequential(nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
        self.skip = nn.Linear(embed_dim, out_dim) if skip else None
        self.head = nn.Linear(out_dim, num_classes)

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        weight = (ids != self.pad_id).to(torch.float32).unsqueeze(-1)
        rows = self._rows(ids)
        if self.token_weight is not None:
            weight = weight * self.token_weight(rows).mean(-1, keepdim=True).exp()
        pooled = (self.token(rows) * weight).sum(1) / weight.sum(1).clamp(min=1e-6)
        out = self.mlp(pooled)
        if self.skip is not None:
            out = out + self.skip(pooled)
        return nn.functional.normalize(out, dim=-1)


class TeacherWithHead(nn.Module):
    """The Hugging Face encoder + mean pooling + the trained class head, with the student's interface
    (one int64 input, outputs logits then embedding), so teacher and student artifacts are alike."""

    def __init__(self, encoder: nn.Module, head: nn.Linear, pad_id: int) -> None:
        super().__init__()
        self.encoder, self.head, self.pad_id = encoder, head, pad_id

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from edgekd.text.teacher import mean_pool

        mask = ids != self.pad_id
        hidden = self.encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        embedding = mean_pool(hidden, mask)
        return self.head(embedding), embedding
