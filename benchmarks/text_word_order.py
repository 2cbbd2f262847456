"""How much of the MiniLM teacher's neighbourhoods word order carries, and so what an order-blind student can reach.

The text student of `edgekd/recipes/minilm.yaml` is a bag of tokens: it cannot see their order. This script
feeds the teacher itself (PyTorch, the run's Hugging Face folder) each held-out pool sentence with its tokens
cut into pieces of k consecutive tokens and the pieces put in a random order ([CLS] and [SEP] stay in place;
k = 1 shuffles every token, a larger k keeps more local order), and measures the mean cosine, recall@10 and
best@10 against the teacher's embedding of the sentence as written (the same pool and metrics as the run and
benchmarks/text_student.py):

* per random order (the range over --orders orders);
* for the average of those orders' embeddings, normalised (at k = 1: an order-blind view of the teacher);
* beside them, the run's exported student files on the same pool (the bag, at the run's device length).

If the teacher's own order-blind view reaches no further than the bag, a better bag will not reach recall 0.80,
and how far intact pieces of k tokens get tells how much longer-range order the student must see.
Writes benchmarks/results/text_word_order.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import interleave  # noqa: E402
from text_student import context, quality, study_header, write_study  # noqa: E402

from edgekd.text.metrics import embedding_metrics, unit  # noqa: E402

RESULT = REPO / "benchmarks" / "results" / "text_word_order.json"
STUDENT_FILES = ("student-onnx-fp32", "student-onnx-int8_dynamic")
COLUMNS = ("embedding", "cos", "R@10", "best@10", "cos, average of orders", "R@10, average of orders",
           "best@10, average of orders")


def piece_sizes(text: str) -> list[int]:
    try:
        sizes = [int(k) for k in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: piece sizes are whole numbers of tokens, 1 or more (e.g. 1,2,4,6)")
    return sizes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", type=Path, default=REPO / "export" / "minilm")
    p.add_argument("--orders", type=int, default=4, help="random orders of the pieces, per piece size")
    p.add_argument("--pieces", type=piece_sizes, default="1,2,4,6", help="piece sizes k in tokens, comma-separated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--result", type=Path, default=RESULT, help="where to write the JSON results")
    p.add_argument("--markdown", action="store_true", help="also print the table as Markdown (README)")
    return p.parse_args(argv)


def shuffle_pieces(ids: np.ndarray, pad_id: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Each row's tokens between the first ([CLS]) and the last real one ([SEP]) cut into pieces of k and the
    pieces put in a random order (each piece keeps its own order)."""
    out = ids.copy()
    for row in out:
        n = int((row != pad_id).sum())
        inner = row[1:n - 1]
        pieces = [inner[i:i + k].copy() for i in range(0, len(inner), k)]
        if len(pieces) > 1:
            row[1:n - 1] = np.concatenate([pieces[j] for j in rng.permutation(len(pieces))])
    return out


def word_order_study(ctx, pieces: list[int], orders: int, seed: int) -> dict:
    from edgekd.text.stages import retrieval_pool
    from edgekd.text.teacher import load_teacher

    data = ctx.text
    pool, reference = retrieval_pool(ctx)
    teacher = load_teacher(data.teacher_folder)
    ids = data.tokenize(pool, data.train_length)  # the length the reference embeddings were computed at
    real = (ids != teacher.pad_id).sum(1)
    out = {"pool": len(pool), "length": data.train_length, "tokens_mean": float(real.mean()),
           "tokens_median": float(np.median(real)), "orders": orders,
           # all 1.0: the reference's own teacher
           "as_written": embedding_metrics(teacher.embed(ids), reference), "pieces": {}}
    rng = np.random.default_rng(seed)
    for k in pieces:
        per_order, total = [], np.zeros_like(reference)
        for n in range(orders):
            shuffled = teacher.embed(shuffle_pieces(ids, teacher.pad_id, k, rng))
            total += shuffled
            per_order.append(embedding_metrics(shuffled, reference))
            print(f"  pieces of {k}, order {n + 1}/{orders}: cosine {per_order[-1]['cosine_to_teacher']:.3f}  "
                  f"recall@10 {per_order[-1]['recall_at_10']:.3f}", file=sys.stderr)
        out["pieces"][str(k)] = {"per_order": per_order,
                                 "order_average": embedding_metrics(unit(total), reference)}
    return out


def student_rows(ctx) -> dict:
    files = {name: ctx.rundir.artifacts / name / "model.onnx" for name in STUDENT_FILES}
    return quality(ctx, {name: path for name, path in files.items() if path.exists()}, ctx.text.device_length)


def table_rows(doc: dict) -> list[tuple[str, ...]]:
    study = doc["study"]

    def span(results: list[dict], key: str) -> str:
        low, high = min(r[key] for r in results), max(r[key] for r in results)
        return f"{low:.3f}" if f"{low:.3f}" == f"{high:.3f}" else f"{low:.3f}–{high:.3f}"

    def row(name: str, per_order: list[dict], average: dict | None) -> tuple[str, ...]:
        keys = ("cosine_to_teacher", "recall_at_10", "best_match_at_10")
        tail = ("–",) * len(keys) if average is None else tuple(f"{average[key]:.3f}" for key in keys)
        return name, *(span(per_order, key) for key in keys), *tail

    rows = [row("teacher, tokens as written", [study["as_written"]], None)]
    for k, r in study["pieces"].items():
        what = "every token in a random order" if k == "1" else f"pieces of {k} tokens in a random order"
        rows.append(row(f"teacher, {what}", r["per_order"], r["order_average"]))
    rows += [row(f"{name} (bag: order-blind)", [r], None) for name, r in doc["students"].items()]
    return rows


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    started = time.perf_counter()
    ctx = context(args.run_dir)
    pieces = args.pieces
    print(f"teacher on {args.orders} random orders of pieces of {pieces} tokens, over the retrieval pool",
          file=sys.stderr)
    doc = {**study_header("text_word_order", args.run_dir, interleave.training_machine_info(torch.get_num_threads())),
           "seed": args.seed, "study": word_order_study(ctx, pieces, args.orders, args.seed),
           "students": student_rows(ctx)}
    return write_study(doc, args.result, started, f"Word order and the teacher's neighbourhoods "
                       f"({doc['study']['pool']} held-out sentences, each searching the others)",
                       COLUMNS, table_rows(doc), args.markdown)


if __name__ == "__main__":
    sys.exit(main())
